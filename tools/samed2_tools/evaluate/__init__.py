"""Evaluation protocols for interactive 3D segmentation with a session (`samed2 eval`).

Two protocols, each object (one label value of a label map) evaluated on its own:

- ``cvpr25``: the interactive protocol of the CVPR 2025 challenge "Foundation Models for Interactive
  3D Biomedical Image Segmentation". Step 0: a box on the middle slice of the object (the slice of
  its median voxel along the slicing axis, as the challenge's box file chooses it; tight, without the
  challenge's random 0-5 pixel enlargement), propagated through the object's extent along that axis
  (the challenge's box also gives that extent). Steps 1-5: a corrective click at the voxel deepest
  inside the largest 3D error component (26-connected; depth = Euclidean distance in voxels to the
  nearest voxel outside the component, the volume's border included; ties go to the first voxel in
  [k, j, i] order), positive where the object was missed and negative where it was over-segmented,
  placed on its slice and propagated again. After each step: DSC and NSD (2 mm tolerance in physical
  space; NSD = 0 when DSC <= 0.2) and the seconds the session took. DSC_AUC and NSD_AUC are the
  trapezoid areas under the scores of the 5 click steps at x = 0..4 (range 0-4; the box step is not
  included, as in the challenge's evaluation code).
- ``propagation``: a box on the middle slice, propagated both ways without limits (the session stops
  where the object ends); Dice per slice (every slice where the truth or the prediction has the
  object), the 3D DSC and NSD, the slices filled past the object's ends, and the session's confidence
  per slice with how well it flags bad slices (AUROC, `confidence_auroc`).

`metrics` scores masks, `clicks` derives the prompts from the truth, `protocols` runs them on a
session case by case, `report` writes the results (JSON, CSV, plots). The cases themselves are read
by `samed2_tools.cases`, as for training.
"""
