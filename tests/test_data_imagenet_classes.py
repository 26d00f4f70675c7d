"""ImageNet-style image folders get ImageNet's class names (open_clip) and OpenAI's templates."""

import pytest
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from PIL import Image

from rcc.data.imagefolder import load_imagefolder
from rcc.data.imagenet_classes import imagenet_wordnet_ids
from rcc.data.registry import load_dataset
from rcc.errors import DataError
from rcc.eval.templates import CIFAR_TEMPLATES, default_templates


def _folder(root, names, images=1):
    for c, name in enumerate(names):
        for i in range(images):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (2, 2), (c % 256, i, 0)).save(path)
    return root


def test_the_wordnet_ids_are_imagenet_1k_in_label_order():
    ids = imagenet_wordnet_ids()
    assert len(ids) == 1000 and sorted(ids, key=ids.get) == sorted(ids)  # label order is sorted WNID order
    assert ids["n01440764"] == 0 and ids["n01443537"] == 1 and ids["n15075141"] == 999


def test_wordnet_folders_get_imagenet_names(tmp_path):
    # An ImageNet-R / -A style subset: three of the thousand, in sorted folder order.
    root = _folder(tmp_path / "imagenet-r", ["n15075141", "n01440764", "n01443537"])
    data = load_imagefolder(root, split="all")
    assert data.classnames == ("tench", "goldfish", "toilet paper")
    assert data.labels == (0, 1, 2)
    assert data.classnames == tuple(IMAGENET_CLASSNAMES[i] for i in (0, 1, 999))


def test_imagenet_v2_numbered_folders_get_imagenet_names(tmp_path):
    root = _folder(tmp_path / "imagenetv2", [str(i) for i in range(1000)])
    data = load_imagefolder(root, split="all")
    # Folders sort as text (0, 1, 10, 100, …); each keeps the name of its number.
    assert data.classnames[:4] == (IMAGENET_CLASSNAMES[0], IMAGENET_CLASSNAMES[1], IMAGENET_CLASSNAMES[10],
                                   IMAGENET_CLASSNAMES[100])
    assert sorted(data.classnames) == sorted(IMAGENET_CLASSNAMES)


def test_other_folders_keep_their_names(tmp_path):
    assert load_imagefolder(_folder(tmp_path / "a", ["0", "1", "2"]), split="all").classnames == ("0", "1", "2")
    assert load_imagefolder(_folder(tmp_path / "b", ["tabby_cat", "n1"]), split="all").classnames == ("n1", "tabby cat")


def test_an_unknown_wordnet_id_is_refused_in_one_line_naming_it(tmp_path):
    root = _folder(tmp_path / "mixed", ["n01440764", "n99999999"])
    with pytest.raises(DataError, match=r"^class folder 'n99999999' in '.*mixed' is not an ImageNet-1k WordNet ID "
                                        r"\(its siblings are\); allowed: .*\?classnames=FILE$"):
        load_imagefolder(root, split="all")
    stray = _folder(tmp_path / "stray", ["n01440764", "cats"])
    with pytest.raises(DataError, match=r"^class folder 'cats' in"):
        load_imagefolder(stray, split="all")


def test_classnames_file_still_overrides(tmp_path):
    root = _folder(tmp_path / "in", ["n01440764", "n99999999"])  # would be refused without the file
    names = tmp_path / "names.txt"
    names.write_text("fish\nmystery\n")
    data = load_dataset(f"imagefolder:{root}?classnames={names}", "all")
    assert data.classnames == ("fish", "mystery")
    (root / "classnames.txt").write_text("a fish\nsomething\n")
    assert load_imagefolder(root, split="all").classnames == ("a fish", "something")


def test_templates_are_openai_imagenet_for_folders_and_clip_cifar_for_cifar(tmp_path):
    root = _folder(tmp_path / "in", ["n01440764", "n01443537"], images=10)
    spec = f"imagefolder:{root}"
    templates = default_templates(spec)
    assert templates == tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES) and len(templates) == 80
    assert load_dataset(spec, "val").classnames == ("tench", "goldfish")  # every split has the names
    assert default_templates("cifar100:/x") == CIFAR_TEMPLATES and len(CIFAR_TEMPLATES) == 18
