"""Pose tracking over video (the paper's §3.2-3.4): flow-guided boxes, greedy id matching.

Pure numpy + cv2; no JAX. `tracker.Tracker` is the per-frame state machine; `flow`,
`matching` and `smoothing` are its pieces.
"""
