"""The paper's two applications of a pretrained LD network, as tools.

- :mod:`ldisc.apps.landmarks` — one-shot landmark localization with center-sensitive averaging
  (``ldisc-localize``);
- :mod:`ldisc.apps.segment` — reading shape-guided segmentations out of a stage-2 network
  (``ldisc-segment``);
- :mod:`ldisc.apps.examples` — one picture of each from a checkpoint (``render_examples``).

Both use the full LD network of a checkpoint (:mod:`ldisc.apps.model_io`).
"""
