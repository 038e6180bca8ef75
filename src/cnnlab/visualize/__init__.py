"""What a CNN sees: image filters and pooling, a trained network's filters, feature maps, class activation
maps and embeddings, as PNGs (``cnnlab-visualize``; ``make visualize ARGS=...``)."""
