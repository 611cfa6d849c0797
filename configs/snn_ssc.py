"""SNN-delays on the Spiking Speech Commands (best_config_SSC): 3 x 512 hidden, K = 31 (300 ms), tau 15 ms.

  python -m train --config configs/snn_ssc.py --workdir runs/snn_ssc --config.dataset.manual_dir=/path/to/ssc

Paper: 80.69 +- 0.21 % test accuracy (selection on the valid split).
"""
from configs import snn_common


def get_config():
  return snn_common.snn_config(dataset="ssc", num_inputs=140, num_classes=35, hidden_features=512,
                               num_hidden_layers=3, max_delay=31, tau=1.5000000001, dropout=0.25, num_epochs=60,
                               batch_size=128, eval_split="validation")
