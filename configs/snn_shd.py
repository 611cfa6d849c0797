"""SNN-delays on the Spiking Heidelberg Digits (best_config_SHD): 2 x 256 hidden, K = 25 (250 ms), tau 10.05 ms.

  python -m train --config configs/snn_shd.py --workdir runs/snn_shd --config.dataset.manual_dir=/path/to/shd

Paper: 95.07 +- 0.24 % test accuracy (SHD has no validation split: the reference selects on test).
"""
from configs import snn_common


def get_config():
  return snn_common.snn_config(dataset="shd", num_inputs=140, num_classes=20, hidden_features=256,
                               num_hidden_layers=2, max_delay=25, tau=1.0050000001, dropout=0.4, num_epochs=150,
                               batch_size=256)
