"""Lightning callbacks: figures for TensorBoard, fine-tuning schedules."""
