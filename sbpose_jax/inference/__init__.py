"""Test time below evaluation: the pose network's crops → keypoints (`pose`), rescoring and
OKS-NMS (`postprocess`). Evaluation, prediction, tracking, the API and export import these;
nothing here imports an evaluator. Import the modules; this package imports nothing."""
