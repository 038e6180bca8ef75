"""Train, test and export one model: `python train.py model=resnet data=landmarks` (see conf/train.yaml)."""

from cnnlab.train import run

if __name__ == "__main__":
    run()
