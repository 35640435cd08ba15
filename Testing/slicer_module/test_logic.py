"""The module's Logic driven by a script alone, as from Slicer's Python console: load a DICOM
series, click in the red view, propagate, export a DICOM-SEG that dciodvfy accepts and that reads
back to the segment's voxels. On slicer-core, with the golden tiny SAMed-2 (random weights whose
masks are always present: where results land is checked, not their quality)."""
import numpy as np
import pytest
import slicer
import vtk

from samed2.choices import PropagationOptions
from samed2.dicomseg import read_seg
from SAMed2SlicerLib.logic import SAMed2Logic, with_suffix

from ct_scene import CLICK, segment_voxels, tiny_model, world_point
from dicomseg_checks import assert_dciodvfy_clean
from slicer_harness import add_slice_views, load_volume


@pytest.fixture
def logic(mrml_scene, golden_dir, tmp_path):
    with_logic = SAMed2Logic(cache_dir=tmp_path / "weights")
    with_logic.use_model("tiny-test", tiny_model(golden_dir))
    with_logic.configure(device="cpu", backend="torch")  # OpenVINO's first-use conversion: test_backend's
    yield with_logic
    with_logic.close()


def red_view_through(volume, k):
    """The red view turned to the volume's slices, through slice k's centre."""
    red = add_slice_views()["Red"]
    red.RotateToVolumePlane(volume)
    i, j = (n // 2 for n in volume.GetImageData().GetDimensions()[:2])
    point = volume_point(volume, (i, j, k))
    red.JumpSliceByCentering(*point)
    return red, point


def volume_point(volume, ijk):
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix.MultiplyPoint((*ijk, 1.0))[:3]


def test_mrml_script_loads_clicks_propagates_and_exports_dicom_seg_through_the_logic(logic, data_dir, tmp_path):
    series = data_dir / "dcmqi" / "ct-3slice"
    volume = load_volume(series / "01.dcm", "ct")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("liver", "Liver")
    red, point = red_view_through(volume, 1)

    assert logic.click(volume, segmentation, segment_id, red, point) == {2: [1]}
    job = logic.propagate(volume, segmentation, None, red, PropagationOptions("both"))
    assert logic.jobs.jobs == [job]
    while logic.jobs.jobs:  # what the module's timer does
        logic.jobs.tick()
    assert job.error is None and job.progress().done == 2

    written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume).astype(bool)
    assert all(written[k].any() for k in range(3))
    message = logic.export(volume, segmentation, "DICOM-SEG", tmp_path / "liver", dicom_folder=series)
    path = tmp_path / "liver.dcm"
    assert message.startswith(f"Wrote DICOM-SEG with 1 segment(s) to {path}")
    assert_dciodvfy_clean(path)
    (liver,) = read_seg(path, series).segments
    assert liver.label == "Liver"
    np.testing.assert_array_equal(liver.mask.astype(bool), written)


def test_mrml_logic_export_says_what_is_missing(logic, data_dir, tmp_path):
    volume = load_volume(data_dir / "dcmqi" / "ct-3slice" / "01.dcm", "ct")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    with pytest.raises(ValueError, match="choose its DICOM folder"):
        logic.export(volume, segmentation, "DICOM-SEG", tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="choose the output file first"):
        with_suffix(None, ".nii.gz")
    assert with_suffix(tmp_path / "a", ".nii.gz") == tmp_path / "a.nii.gz"


def test_mrml_closing_the_scene_stops_the_run_and_frees_the_segmenter(logic, ct, abdomen, views):
    logic.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    ended = []
    job = logic.propagate(ct, abdomen, ["liver"], views["Red"], PropagationOptions("both", stop_after_absent=0),
                          on_end=ended.append)
    slicer.mrmlScene.Clear(0)
    assert ended == [job] and job.progress().finished and job.cancelled
    assert logic.segmenter is None and logic.jobs.jobs == []


def test_mrml_press_over_a_prompt_is_left_to_markups(ct, abdomen, views):
    """The effect lets a press through when the mouse is over a prompt's point or handle: the
    Markups displayable manager marks that on the display node's active component on hover."""
    from SAMed2SlicerLib.prompts import add_point, hovered_prompt
    from SAMed2SlicerLib.segments import Target

    prompt = add_point(Target(abdomen, "liver", ct, 2), world_point(CLICK), True)
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "not a prompt")
    other.AddControlPointWorld(*world_point(CLICK))
    other.CreateDefaultDisplayNodes()
    other.GetDisplayNode().SetActiveControlPoint(0)
    assert hovered_prompt(abdomen) is None
    prompt.GetDisplayNode().SetActiveControlPoint(0)
    assert hovered_prompt(abdomen) is prompt
    prompt.GetDisplayNode().SetActiveComponent(slicer.vtkMRMLMarkupsDisplayNode.ComponentNone, -1)
    assert hovered_prompt(abdomen) is None


def test_mrml_undo_state_is_saved_only_by_actions_that_write(logic, ct, abdomen, views):
    """The GUI passes the Segment Editor's saveStateForUndo as `before_write`: it runs once
    before an action's first write, and not for an action that is refused or writes nothing."""
    from samed2.errors import InputError

    saved = []
    with pytest.raises(InputError):
        logic.click(ct, abdomen, "liver", views["Red"], world_point((-50, 50, 15)),
                    before_write=lambda: saved.append(1))
    assert saved == []
    logic.click(ct, abdomen, "liver", views["Red"], world_point(CLICK), before_write=lambda: saved.append("click"))
    assert saved == ["click"]
    assert logic.apply_moved_prompts(before_write=lambda: saved.append("moved")) is None  # nothing moved
    job = logic.propagate(ct, abdomen, ["liver"], views["Red"], PropagationOptions("up", stop=18),
                          before_write=lambda: saved.append("propagation"))
    job.wait(timeout_s=120)
    assert saved == ["click", "propagation"]


def test_mrml_warm_up_is_a_job_that_ends_when_the_slices_around_the_view_are_encoded(logic, ct, abdomen, views):
    assert logic.warm_up(ct, abdomen, views["Red"]) is None, "no segmenter yet: nothing to warm up"
    logic.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    views["Red"].JumpSliceByCentering(*world_point((CLICK[0], CLICK[1], 20)))
    job = logic.warm_up(ct, abdomen, views["Red"])
    assert logic.warm_up(ct, abdomen, views["Red"]) is None, "one warm-up at a time"
    while logic.jobs.jobs:
        logic.jobs.tick()
    assert job.error is None
    cache = logic.segmenter.session(2).features.cache
    assert all(index in cache for index in range(18, 23))


def test_mrml_precision_setting_reaches_the_engine_session_and_the_status_line(logic, ct, abdomen, views):
    """The panel's Precision combo sets `precision` as the CLI's --precision does: each value makes a
    new segmenter whose sessions run in it, and the status line after a click says what runs ("auto"
    resolved by the engine's own rule: bf16 only where it is native and measured faster)."""
    import torch

    from samed2.device import pick_precision

    assert logic.settings.precision == "auto"
    logic.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    auto = pick_precision("auto", torch.device("cpu"))
    first = logic.segmenter
    assert first.session(2).features.precision == auto
    assert logic.prompt_message({2: [15]}) == \
        f"Segmented slice k = 15; tiny-test runs on cpu in {auto} (precision setting: auto)."
    for precision in ("bf16", "fp32"):
        logic.configure(precision=precision)
        assert logic.segmenter is None, "a changed precision closes the segmenter"
        logic.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
        assert logic.segmenter is not first and logic.segmenter.session(2).features.precision == precision
        assert logic.prompt_message({}) == \
            f"Nothing changed; tiny-test runs on cpu in {precision} (precision setting: {precision})."
        first = logic.segmenter
    logic.configure(precision="fp32")
    assert logic.segmenter is first, "the same setting keeps the segmenter (and its cached slices)"


def test_mrml_unknown_precision_is_refused_with_the_choices(logic, ct, abdomen, views):
    from samed2.errors import InputError

    before = segment_voxels(abdomen, "liver", ct)
    with pytest.raises(InputError, match="unknown precision 'fp16'; choose one of auto, fp32, bf16"):
        logic.configure(precision="fp16")
    assert logic.settings.precision == "auto", "a refused setting leaves the settings as they were"
    assert logic.prompt_nodes() == []
    np.testing.assert_array_equal(segment_voxels(abdomen, "liver", ct), before)


def test_mrml_misspelt_setting_is_refused_naming_the_settings(logic, ct, abdomen, views):
    """configure() takes the names of samed2.choices.EngineSettings only: a typo is an error, not a
    setting stored and never read."""
    from samed2.errors import InputError

    logic.click(ct, abdomen, "liver", views["Red"], world_point(CLICK))
    segmenter, settings = logic.segmenter, logic.settings
    with pytest.raises(InputError, match="unknown setting precison; the settings are model, device, preset, "
                                         "precision, backend"):
        logic.configure(precison="bf16")
    assert logic.settings == settings and logic.segmenter is segmenter, "nothing changed"


def test_mrml_backend_setting_reaches_the_sessions_with_the_cache_beside_the_weights(logic, ct, abdomen):
    """The Logic's backend setting ("auto" by default) goes to the engine sessions; converted encoders
    are kept in the Logic's weights cache (nothing is converted before the first encoding)."""
    from samed2.backends import ChosenEncoder
    from samed2.choices import EngineSettings

    from suite import require_module

    require_module("openvino", "the OpenVINO backend, samed2[cpu]")
    assert EngineSettings().backend == "auto"
    logic.configure(backend="openvino")
    encoder = logic.segmenter_for(ct, abdomen).session(2).features.image_encoder
    assert isinstance(encoder, ChosenEncoder) and not encoder.measure
    assert encoder.cache == logic.cache_dir / "openvino" and not encoder.chosen
    logic.configure(backend="torch")
    assert logic.segmenter is None, "a changed backend closes the segmenter"
    assert logic.segmenter_for(ct, abdomen).session(2).features.image_encoder is logic.engine_model().image_encoder
