"""Skeleton drawing: colours per dataset, score → opacity, grid."""
import numpy as np
import pytest

from sbpose_jax import keypoints, visualize


def _person(info, score=1.0):
  rng = np.random.default_rng(0)
  k = np.zeros((info.num_joints, 3))
  k[:, 0] = rng.uniform(40, 160, info.num_joints)
  k[:, 1] = rng.uniform(40, 160, info.num_joints)
  k[:, 2] = score
  return k


@pytest.mark.parametrize("name", sorted(keypoints.DATASETS))
def test_every_dataset_draws_and_has_colours(name):
  info = keypoints.get(name)
  assert visualize.joint_colours(info).shape == (info.num_joints, 3)
  assert visualize.link_colours(info).shape == (len(info.skeleton), 3)
  img = np.zeros((200, 200, 3), np.uint8)
  out = visualize.draw_poses(img, _person(info), name, boxes=np.array([[30, 30, 140, 140]]))
  assert out.shape == img.shape and out.dtype == np.uint8
  assert (out != 0).any()
  assert (img == 0).all()  # the input is not modified


def test_left_right_colours_differ():
  c = visualize.joint_colours(keypoints.COCO)
  names = keypoints.COCO.joint_names
  assert tuple(c[names.index("left_wrist")]) == visualize.LEFT
  assert tuple(c[names.index("right_wrist")]) == visualize.RIGHT
  assert tuple(c[names.index("nose")]) == visualize.CENTRE


def test_opacity_follows_score():
  info = keypoints.COCO
  img = np.zeros((200, 200, 3), np.uint8)
  strong = visualize.draw_poses(img, _person(info, 0.9), "coco").astype(int).sum()
  weak = visualize.draw_poses(img, _person(info, 0.2), "coco").astype(int).sum()
  hidden = visualize.draw_poses(img, _person(info, 0.01), "coco", kpt_thr=0.05)
  assert strong > weak > 0
  assert (hidden == 0).all()


def test_alpha_mapping():
  a = visualize.score_to_alpha(np.array([0.0, 0.05, 0.3, 0.6, 1.0, np.nan]), 0.05, 0.6)
  assert a[0] == 0 and a[1] == 0 and a[-1] == 0
  assert 0 < a[2] < a[3] == 1.0 == a[4]


def test_wrong_joint_count_is_a_clear_error():
  with pytest.raises(ValueError, match=r"\(N, 17, 3\)"):
    visualize.draw_poses(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 14, 3)), "coco")


def test_points_outside_the_image_are_fine():
  k = _person(keypoints.COCO)
  k[:5, :2] = [[-50, -50], [500, 10], [10, 900], [np.nan, 3], [1e9, -1e9]]
  out = visualize.draw_poses(np.zeros((100, 120, 3), np.uint8), k, "coco")
  assert out.shape == (100, 120, 3)


def test_grid_layout():
  imgs = [np.full((30, 40, 3), 200, np.uint8), np.full((60, 20, 3), 100, np.uint8),
          np.full((10, 10), 50, np.uint8)]
  g = visualize.make_grid(imgs, cols=2, cell_hw=(30, 40), pad=2)
  assert g.shape == (2 * 30 + 3 * 2, 2 * 40 + 3 * 2, 3)
  assert (g[2:32, 2:42] == 200).all()
  with pytest.raises(ValueError):
    visualize.make_grid([])
