"""Keypoint tables: every dataset's names, flip pairs, sigmas and skeleton agree with each other
and with the published joint counts (docs/reference.md §6)."""
import numpy as np
import pytest

from sbpose_jax import keypoints

JOINTS = {"coco": 17, "ochuman": 17, "posetrack18": 17, "aic": 14, "crowdpose": 14, "mpii": 16,
          "mpii_trb": 40, "coco_wholebody": 133}


@pytest.mark.parametrize("name", sorted(JOINTS))
def test_table_is_consistent(name):
  info = keypoints.get(name)
  k = info.num_joints
  assert info.name == name and k == JOINTS[name] == len(set(info.joint_names))
  assert len(info.sigmas) == k and all(s > 0 for s in info.sigmas)
  flat = [j for pair in info.flip_pairs for j in pair]
  assert len(flat) == len(set(flat)) and all(0 <= j < k for j in flat)
  flip = info.flip_index
  np.testing.assert_array_equal(flip[flip], np.arange(k))           # an involution
  for a, b in info.flip_pairs:
    assert (flip[a], flip[b]) == (b, a)
  assert all(0 <= a < k and 0 <= b < k and a != b for a, b in info.skeleton)
  assert all(0 <= j < k for j in info.upper_body_ids)
  np.testing.assert_array_equal(info.sigmas_array, np.asarray(info.sigmas, np.float64))


def test_left_right_names_swap_under_flip():
  for name in ("coco", "mpii", "crowdpose", "aic", "mpii_trb"):
    info = keypoints.get(name)
    for a, b in info.flip_pairs:
      na, nb = info.joint_names[a], info.joint_names[b]
      swapped = na.replace("left", "@").replace("right", "left").replace("@", "right")
      assert swapped == nb, (name, na, nb)


def test_shared_tables_and_published_sigma_conventions():
  assert keypoints.get("ochuman").sigmas == keypoints.COCO.sigmas
  assert keypoints.get("posetrack18").num_joints == 17
  # The 2020 AIC rows were scored with the sigmas doubled; the corrected ones are kept beside.
  np.testing.assert_allclose(keypoints.AIC.sigmas_array,
                             2 * np.asarray(keypoints.AIC_SIGMAS_CORRECTED))
  wb = keypoints.COCO_WHOLEBODY
  assert wb.sigmas[:17] == keypoints.COCO.sigmas
  parts = sorted(keypoints.WHOLEBODY_PARTS.values())
  assert parts[0][0] == 0 and parts[-1][1] == wb.num_joints
  assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))       # contiguous, no gaps


def test_unknown_dataset_names_the_known_ones():
  with pytest.raises(ValueError, match="unknown dataset 'coco17'.*coco_wholebody"):
    keypoints.get("coco17")
