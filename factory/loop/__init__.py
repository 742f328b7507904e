"""The closed loop: field captures -> annotation -> a new dataset version -> retrain -> gate -> staged rollout.

- :mod:`.captures`: what devices captured, exported as a CVAT 1.1 task with the model's own outputs as
  pre-annotations;
- :mod:`.versions`: a corrected CVAT export imported as a new dataset version naming its parent and the
  capture set (old files keep their split; the field slice has its own test part);
- :mod:`.run`: ``factory loop run``: from an open retraining trigger (or a dataset version) to a staged
  rollout, every step in the audit log;
- :mod:`.demo`: ``factory loop demo``: the whole loop on a simulated fleet whose cameras drift.
"""
