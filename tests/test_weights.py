"""Initial weights: strict modes, backbone/EMA/fine-tuning loads, unsafe or broken files, the pretrained cache.

Every file is written by the test; nothing is downloaded (a download attempt is made to fail at once).
"""

from __future__ import annotations

import logging
import time
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from super_recipes import models
from super_recipes.config.compose import compose_recipe
from super_recipes.engine.checkpoints import save_checkpoint
from super_recipes.errors import RecipeError
from super_recipes.models import pretrained
from super_recipes.models.weights import (
    CHECKPOINT_PARAMS_KEYS,
    REPORT_ATTRIBUTE,
    head_prefix,
    load_initial_weights,
    load_state_dict_into,
    load_weights,
    normalize_strict_load,
)

TINY = "resnet_tiny_cifar"
HEAD = ["fc.weight", "fc.bias"]


def tiny(num_classes: int = 10, seed: int = 0, **arch: object) -> nn.Module:
    """A tiny ResNet whose every tensor (BN statistics too) is random, so equality proves a load happened."""
    model = models.get(TINY, num_classes=num_classes, **arch)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: object = None) -> bool:
    return all(torch.equal(a[k], b[k]) for k in (keys if keys is not None else a))


def write(path: Path, content: object) -> Path:
    torch.save(content, path)
    return path


@pytest.fixture
def log_lines():
    """Messages of the ``super_recipes`` logger (the trainer turns its propagation off, so caplog may miss them)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(f"{record.levelname} {record.getMessage()}")  # type: ignore
    logger = logging.getLogger("super_recipes")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A real super_recipes checkpoint (written by save_checkpoint) with distinct ``net`` and ``ema_net``."""
    net, ema = tiny(seed=1).state_dict(), tiny(seed=2).state_dict()
    path = tmp_path / "ckpt_best.pth"
    save_checkpoint({"net": net, "ema_net": ema, "acc": 0.9, "epoch": 3, "recipe": "a: 1\n"}, path)
    return path, net, ema


# ---- strict_load -------------------------------------------------------------------------------------------------

def test_strict_on_loads_every_tensor(checkpoint, log_lines):
    path, net, _ = checkpoint
    model = tiny(seed=9)
    report = load_weights(model, path)
    assert same(net, model.state_dict())
    assert len(report.loaded) == report.model_tensors and not report.not_loaded
    assert getattr(model, REPORT_ATTRIBUTE) is report
    assert any(line.startswith("INFO Loaded 56/56") for line in log_lines)


def test_strict_on_refuses_differences_and_leaves_the_model_untouched(tmp_path, checkpoint):
    path, net, _ = checkpoint
    renamed = {("stem.0.renamed" if k == "stem.0.weight" else k): v for k, v in net.items()}
    model = tiny(seed=9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RecipeError) as err:
        load_weights(model, write(tmp_path / "renamed.pth", renamed))
    message = str(err.value)
    assert "renamed.pth" in message and "strict_load=on" in message
    assert "1 (stem.0.weight): not in the checkpoint" in message
    assert "1 (stem.0.renamed): only in the checkpoint" in message
    assert same(before, model.state_dict())  # nothing half-loaded

    with pytest.raises(RecipeError, match=r"another shape.*\n.*strict_load=off") as err:
        load_weights(tiny(width=8), path)
    assert len(str(err.value).splitlines()) < 8


def test_strict_off_loads_what_matches_and_reports_the_rest(tmp_path, checkpoint, log_lines):
    path, net, _ = checkpoint
    edited = dict(net)
    del edited["stem.0.weight"]
    edited["extra.weight"] = torch.ones(3)
    edited["stages.0.0.conv1.weight"] = torch.ones(2, 2)
    model = tiny(seed=9)
    report = load_weights(model, write(tmp_path / "edited.pth", edited), strict_load="off")
    assert report.missing == ["stem.0.weight"] and report.unexpected == ["extra.weight"]
    assert report.mismatched == {"stages.0.0.conv1.weight": ((2, 2), (16, 16, 3, 3))}
    assert same(net, model.state_dict(), report.loaded) and len(report.loaded) == 54
    assert any(line.startswith("WARNING Loaded 54/56") and "extra.weight" in line for line in log_lines)

    foreign = write(tmp_path / "foreign.pth", {"a.weight": torch.ones(2)})
    with pytest.raises(RecipeError, match="Nothing in .*foreign.pth matches"):
        load_weights(model, foreign, strict_load=False)


def test_no_key_matching_loads_by_position(tmp_path, checkpoint):
    path, net, _ = checkpoint
    # Another implementation of the same network: other names, same order and shapes, no BN counters.
    other = {f"layer{i}.param": v for i, (k, v) in enumerate(net.items()) if not k.endswith("num_batches_tracked")}
    file = write(tmp_path / "other_impl.pth", other)
    with pytest.raises(RecipeError, match="no_key_matching"):
        load_weights(tiny(), file)
    model = tiny(seed=9)
    report = load_weights(model, file, strict_load="no_key_matching")
    assert same(net, model.state_dict(), [k for k in net if not k.endswith("num_batches_tracked")])
    assert len(report.loaded) == 47 and report.missing == [k for k in net if k.endswith("num_batches_tracked")]

    shuffled = dict(reversed(list(other.items())))
    with pytest.raises(RecipeError, match=r"do not line up with the model at tensor 0: model stem.0.weight"):
        load_weights(tiny(), write(tmp_path / "shuffled.pth", shuffled), strict_load="no_key_matching")
    with pytest.raises(RecipeError, match="has 46 tensors, the model 47"):
        load_weights(tiny(), write(tmp_path / "short.pth", dict(list(other.items())[:-1])),
                     strict_load="no_key_matching")


@pytest.mark.parametrize(("value", "mode"), [(True, "on"), (False, "off"), ("on", "on"), ("OFF", "off"),
                                             ("true", "on"), (None, "on"), ("no_key_matching", "no_key_matching")])
def test_strict_load_values(value, mode):
    assert normalize_strict_load(value) == mode


def test_bad_strict_load_value_names_the_valid_ones():
    with pytest.raises(RecipeError, match="strict_load='no_key_match'.*Did you mean: no_key_matching"):
        normalize_strict_load("no_key_match")


# ---- what is loaded: backbone, EMA, prefixes, nested dicts ----------------------------------------------------------

def test_load_backbone_leaves_the_head(tmp_path, checkpoint):
    path, net, _ = checkpoint
    model = tiny(num_classes=5, seed=9)
    head_before = {k: model.state_dict()[k].clone() for k in HEAD}
    report = load_weights(model, path, load_backbone=True)
    assert report.skipped == HEAD and report.ignored == HEAD and report.head_prefix == "fc"
    assert same(net, model.state_dict(), report.loaded) and len(report.loaded) == 54
    assert same(head_before, model.state_dict(), HEAD)

    backbone_only = write(tmp_path / "backbone.pth", {k: v for k, v in net.items() if not k.startswith("fc.")})
    with pytest.raises(RecipeError, match=r"fc.weight, fc.bias\): not in the checkpoint(.|\n)*load_backbone=true"):
        load_weights(tiny(), backbone_only)
    assert load_weights(tiny(), backbone_only, load_backbone=True).skipped == HEAD
    report = load_weights(tiny(num_classes=5), path, strict_load="no_key_matching", load_backbone=True)
    assert report.ignored == HEAD and len(report.loaded) == 54


def test_head_prefix_of_our_models():
    assert head_prefix(models.get(TINY)) == "fc"
    assert head_prefix(models.get("mobilenet_v3_small", num_classes=3)) == "classifier.3"
    assert head_prefix(models.get("efficientnet_b0", num_classes=3)) == "classifier.1"

    class Declared(nn.Module):
        head_prefix = "out"

        def __init__(self) -> None:
            super().__init__()
            self.body, self.out = nn.Linear(4, 4), nn.Conv2d(4, 2, 1)

    assert head_prefix(Declared()) == "out"
    with pytest.raises(RecipeError, match="cannot tell the head of Conv2d.*head_prefix"):
        load_state_dict_into(nn.Conv2d(1, 1, 1), {"weight": torch.ones(1, 1, 1, 1)}, load_backbone=True)


def test_load_ema_as_net(tmp_path, checkpoint):
    path, net, ema = checkpoint
    model = tiny(seed=9)
    load_weights(model, path, load_ema_as_net=True)
    assert same(ema, model.state_dict())
    load_weights(model, path)
    assert same(net, model.state_dict())
    no_ema = write(tmp_path / "no_ema.pth", {"net": net, "epoch": 1})
    with pytest.raises(RecipeError, match="load_ema_as_net is set but .*no_ema.pth has no 'ema_net'"):
        load_weights(model, no_ema, load_ema_as_net=True)


@pytest.mark.parametrize("layout", ["plain", "module.", "_orig_mod.", "module._orig_mod.", "state_dict", "model",
                                    "model_state_dict"])
def test_state_dict_layouts_of_other_tools(tmp_path, checkpoint, layout):
    _, net, _ = checkpoint
    if layout.endswith("."):
        content: dict = {layout + k: v for k, v in net.items()}
    elif layout == "plain":
        content = net
    else:
        content = {layout: {f"module.{k}": v for k, v in net.items()}, "epoch": 7}
    model = tiny(seed=9)
    load_weights(model, write(tmp_path / "other.pth", content))
    assert same(net, model.state_dict())


def test_compiled_model_checkpoint_into_compiled_model(tmp_path, checkpoint):
    _, net, _ = checkpoint
    source = tiny(seed=1)
    compiled_state = torch.compile(source).state_dict()  # compile is lazy: nothing is traced here
    assert next(iter(compiled_state)).startswith("_orig_mod.")
    target = torch.compile(tiny(seed=9))
    load_weights(target, write(tmp_path / "compiled.pth", {"net": compiled_state}))
    assert same(net, target._orig_mod.state_dict())


# ---- fine-tuning: another class count ----------------------------------------------------------------------------

@pytest.mark.parametrize("strict", ["on", "off", "no_key_matching"])
def test_fine_tuning_loads_all_but_the_head_and_reports_it(checkpoint, log_lines, strict):
    path, net, _ = checkpoint
    model = models.get(TINY, num_classes=5, checkpoint_path=path, strict_load=strict)
    report = getattr(model, REPORT_ATTRIBUTE)
    assert list(report.mismatched) == HEAD and report.head_reinitialized
    assert report.mismatched["fc.weight"] == ((10, 16 * 4), (5, 16 * 4))
    assert set(report.not_loaded) <= {*HEAD, *(k for k in net if k.endswith("num_batches_tracked"))}
    assert same(net, model.state_dict(), report.loaded) and len(report.loaded) >= 45
    assert any(line.startswith("WARNING") and "fc.weight" in line and "fine-tuning" in line for line in log_lines)


# ---- unsafe, broken and foreign files ------------------------------------------------------------------------------

MARKER_NAME = "payload_ran"


def _make_marker(path: str) -> None:
    Path(path).write_text("the pickle ran code")


class _Payload:
    """Unpickling this calls ``_make_marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return _make_marker, (str(self.marker),)


def test_pickle_with_arbitrary_objects_is_refused_unexecuted(tmp_path):
    marker = tmp_path / MARKER_NAME
    path = write(tmp_path / "evil.pth", {"net": _Payload(marker)})
    with pytest.raises(RecipeError) as err:
        models.get(TINY, checkpoint_path=path)
    assert "evil.pth" in str(err.value) and "arbitrary" in str(err.value)
    assert len(str(err.value).splitlines()) <= 6
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is live: unsafe loading would have run it
    assert marker.exists()


def test_truncated_checkpoint(tmp_path, checkpoint):
    path, _, _ = checkpoint
    broken = tmp_path / "truncated.pth"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RecipeError, match=r"Cannot load checkpoint .*truncated.pth") as err:
        load_weights(tiny(), broken)
    assert len(str(err.value).splitlines()) <= 6


@pytest.mark.parametrize(("name", "content"), [("random.pth", bytes(range(256)) * 40),
                                               ("notes.txt", b"just some notes\n"),
                                               ("config.json", b'{"net": {"a": 1}}'),
                                               ("empty.pth", b"")])
def test_foreign_or_random_files(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RecipeError, match=rf"Cannot load checkpoint .*{name}") as err:
        load_initial_weights(tiny(), {"checkpoint_path": str(tmp_path / name)})
    assert len(str(err.value).splitlines()) <= 6


def test_missing_file_and_non_weights_dicts(tmp_path):
    with pytest.raises(RecipeError, match="Checkpoint not found: .*nope.pth"):
        load_weights(tiny(), tmp_path / "nope.pth")
    with pytest.raises(RecipeError, match="holds no tensors .*top-level keys: epoch, acc"):
        load_weights(tiny(), write(tmp_path / "meta.pth", {"epoch": 1, "acc": 0.5}))


# ---- pretrained weights and their cache ----------------------------------------------------------------------------

@pytest.fixture
def weights_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "weights_cache"
    monkeypatch.setenv(pretrained.WEIGHTS_DIR_ENV, str(folder))
    return folder


def test_pretrained_cache_hit_fine_tunes(weights_cache):
    import torchvision

    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    assert pretrained.pretrained_url("resnet18", "imagenet") == url
    imagenet = torchvision.models.resnet18(num_classes=1000).state_dict()
    weights_cache.mkdir()
    write(weights_cache / url.rsplit("/", 1)[-1], imagenet)

    model = models.get("resnet18", num_classes=10, pretrained_weights="imagenet")
    report = getattr(model, REPORT_ATTRIBUTE)
    assert list(report.mismatched) == HEAD and report.mismatched["fc.weight"] == ((1000, 512), (10, 512))
    assert same(imagenet, model.state_dict(), report.loaded) and len(report.loaded) == report.model_tensors - 2

    full = models.get("resnet18", pretrained_weights="IMAGENET1K_V1")  # the enum member name works too
    assert same(imagenet, full.state_dict()) and not getattr(full, REPORT_ATTRIBUTE).not_loaded


def test_pretrained_cache_miss_says_what_to_put_where(weights_cache, monkeypatch):
    def offline(url: str, path: Path) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(pretrained, "_download", offline)
    url = pretrained.pretrained_url("mobilenet_v3_small", "imagenet")
    file_name = url.rsplit("/", 1)[-1]
    with pytest.raises(RecipeError) as err:
        models.get("mobilenet_v3_small", num_classes=3, pretrained_weights="imagenet")
    message = str(err.value)
    assert f"Put the file {file_name}\n" in message and f"in the folder {weights_cache}\n" in message
    assert f"fetching it from {url}\n" in message and "no network" in message
    assert not (weights_cache / file_name).exists()


def test_a_real_download_failure_is_quick_and_leaves_no_file(weights_cache, monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(pretrained, "_REGISTERED", {})
    # Port 9 (discard) on the loopback interface: refused at once, with or without internet access.
    pretrained.register_pretrained_weights(TINY, "shapes", "http://127.0.0.1:9/models/tiny-0123abcd.pth")
    assert "shapes" in pretrained.pretrained_tags(TINY)
    start = time.monotonic()
    with pytest.raises(RecipeError, match=r"(?s)Put the file tiny-0123abcd.pth\nin the folder .*127.0.0.1:9"):
        models.get(TINY, pretrained_weights="shapes")
    assert time.monotonic() - start < 10
    assert list(weights_cache.iterdir()) == []


def test_no_published_weights():
    with pytest.raises(RecipeError, match="No published weights for 'resnet18_cifar'.*resnet18.*checkpoint_path"):
        models.get("resnet18_cifar", pretrained_weights="imagenet")
    with pytest.raises(RecipeError, match="'resnet50' has no pretrained weights 'coco'; valid values: .*IMAGENET1K_V2"):
        pretrained.pretrained_url("resnet50", "coco")


def test_default_cache_is_torch_hubs_checkpoint_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(pretrained.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert pretrained.weights_dir() == tmp_path / "torch_home" / "hub" / "checkpoints"


# ---- the recipe group checkpoint_params ----------------------------------------------------------------------------

def test_recipe_checkpoint_params(checkpoint):
    path, net, ema = checkpoint
    cfg, _ = compose_recipe("shapes_resnet")
    assert set(cfg.checkpoint_params) == set(CHECKPOINT_PARAMS_KEYS)
    assert load_initial_weights(models.get(cfg.architecture, arch_params=cfg.arch_params),
                                cfg.checkpoint_params, cfg.architecture) is None

    cfg, _ = compose_recipe("shapes_resnet", [f"checkpoint_params.checkpoint_path={path}",
                                              "checkpoint_params.load_ema_as_net=true", "arch_params.num_classes=10"])
    model = models.get(cfg.architecture, arch_params=cfg.arch_params)
    report = load_initial_weights(model, cfg.checkpoint_params, cfg.architecture)
    assert report is not None and not report.not_loaded and same(ema, model.state_dict())

    cfg, _ = compose_recipe("shapes_resnet", [f"checkpoint_params.checkpoint_path={path}",
                                              "checkpoint_params.strict_load=no_key_matching",
                                              "arch_params.num_classes=3"])
    model = models.get(cfg.architecture, arch_params=cfg.arch_params)
    assert list(load_initial_weights(model, cfg.checkpoint_params, cfg.architecture).mismatched) == HEAD


def test_recipe_checkpoint_params_mistakes(checkpoint):
    path, _, _ = checkpoint
    with pytest.raises(RecipeError, match="checkpoint_params.strict_loading. Did you mean: strict_load"):
        load_initial_weights(tiny(), {"checkpoint_path": str(path), "strict_loading": False})
    with pytest.raises(RecipeError, match="not both"):
        load_initial_weights(tiny(), {"checkpoint_path": str(path), "pretrained_weights": "imagenet"})
    with pytest.raises(RecipeError, match="load_backbone must be true or false"):
        load_initial_weights(tiny(), {"checkpoint_path": str(path), "load_backbone": "yes please"})


def test_pretrained_googlenet_without_aux_heads(weights_cache):
    import torchvision

    torch.manual_seed(3)
    published = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).eval()
    entry = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1
    weights_cache.mkdir()
    torch.save(published.state_dict(), weights_cache / Path(entry.url).name)  # its heads aux1, aux2 included

    model = models.get("googlenet", pretrained_weights="imagenet").eval()
    report = model._super_recipes_load_report
    assert not report.not_loaded and not report.unexpected
    assert {key.split(".")[0] for key in report.left_out} == {"aux1", "aux2"}
    # As torchvision's builder does with these weights: inputs rescaled for the TensorFlow-trained weights.
    assert model.transform_input
    published.transform_input = True
    image = torch.rand(1, 3, 96, 96)
    torch.testing.assert_close(model(image), published(image))
    with pytest.raises(RecipeError, match="aux1"):  # with the heads built, they must be in the checkpoint
        torch.save({k: v for k, v in published.state_dict().items() if not k.startswith("aux")},
                   weights_cache / "no_aux.pth")
        models.get("googlenet", aux_logits=True, checkpoint_path=weights_cache / "no_aux.pth")
