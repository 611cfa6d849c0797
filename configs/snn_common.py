"""The SNN-delays recipe (spec ``snn_delays.md`` sections 2-3) as one function; each configs/snn_*.py is its table.

Recipe: [delays -> BatchNorm -> LIF -> dropout] x L -> delays -> readout membrane; loss = cross-entropy of the
summed per-step softmax. Weights: Adam, L2 1e-5 on synapse weights, torch OneCycleLR(max 5e-3) per epoch cycling
beta1. Positions: Adam lr 0.1, cosine to 0 per epoch, clamped after every step. Sigmas: not trained, set each
epoch by the decay from K // 2 to 0.23 over epochs // 4 epochs. Evaluation with rounded integer delays.
Ablations (``--config.model.delays``): 'learned' (the method), 'fixed' (random integer delays), 'none'.
"""
import ml_collections

from models import snn_delays


def snn_config(*, dataset: str, num_inputs: int, num_classes: int, hidden_features: int, num_hidden_layers: int,
               max_delay: int, tau: float, dropout: float, num_epochs: int, batch_size: int,
               eval_split: str = "test") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = num_epochs
  c.batch_size = batch_size
  c.parallel = "pmap"
  c.log_every_steps = 20
  c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, auto=False)
  c.input_key = "spikes"
  c.task = dict(name="snn_delays")

  c.model = dict(name="snn_delays", num_inputs=num_inputs, num_outputs=num_classes, hidden_features=hidden_features,
                 num_hidden_layers=num_hidden_layers, max_delay=max_delay, tau=tau, dropout=dropout,
                 delays="learned", bn_axis_name="data")
  c.dataset = dict(name=dataset, data_dir="~/tensorflow_datasets", manual_dir=None, train_split="train",
                   eval_split=eval_split, prefetch=2, cache=False)

  recipe = snn_delays.optimizer_config(max_learning_rate=5e-3, l2_weight_decay=1e-5, positions_learning_rate=0.1)
  c.optimizer = recipe.optimizer
  c.schedule = recipe.schedule
  c.sigma_schedule = dict(sigma_init=float(max_delay // 2), final_epoch=num_epochs // 4)
  c.checkpoint = dict(every_steps=500, max_to_keep=2, best_metric="eval/accuracy", best_mode="max", async_save=True)
  return c
