"""Do learned delays matter? SNN-delays on the bundled delay task (train/data/delay_task.py), a few CPU minutes.

  python -m train --config configs/snn_delay_task.py --workdir runs/delay_learned
  python -m train --config configs/snn_delay_task.py --workdir runs/delay_fixed --config.model.delays=fixed
  python -m train --config configs/snn_delay_task.py --workdir runs/delay_none --config.model.delays=none

The 5 classes differ only in the order of the spikes inside blocks of 4 channels (same spike counts, random global
shift): delays of 0..3 steps that make one order's spikes coincide separate them. The SNN-delays recipe in small:
24 -> 12 -> 5, K = 7, tau 1.5 steps, 30 epochs, sigma decaying from 3 to 0.23 over the first 7.
"""
from configs import snn_common


def get_config():
  c = snn_common.snn_config(dataset="delay_task", num_inputs=24, num_classes=5, hidden_features=12,
                            num_hidden_layers=1, max_delay=7, tau=1.5, dropout=0.1, num_epochs=30, batch_size=50)
  c.dataset.cache = True  # 2,500 small records: decoded once
  c.log_every_steps = 10
  return c
