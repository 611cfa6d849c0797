"""SNN-delays on Google Speech Commands v0.02, 35 words, 140 log-mel bands (best_config_GSC): as SSC, 100 epochs.

  python -m train --config configs/snn_gsc.py --workdir runs/snn_gsc --config.dataset.manual_dir=/path/to/gsc

Reported: about 95.3 % test accuracy (secondary sources; selection on the validation split).
"""
from configs import snn_common


def get_config():
  return snn_common.snn_config(dataset="gsc", num_inputs=140, num_classes=35, hidden_features=512,
                               num_hidden_layers=3, max_delay=31, tau=1.5000000001, dropout=0.25, num_epochs=100,
                               batch_size=128, eval_split="validation")
