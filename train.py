"""Train, test and export one model: `python train.py model=resnet data=landmarks` (see conf/train.yaml)."""

from cnnlab.train import main

if __name__ == "__main__":
    main()
