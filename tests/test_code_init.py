"""distill.medication.code_init: code embeddings from the teacher's reading of code titles."""

from __future__ import annotations

import numpy as np
import pytest

from distill.data.tensors import MedVocabs
from distill.data.vocab import Vocab
from distill.medication.code_init import (
    code_text,
    code_texts,
    code_title_table,
    init_student_embeddings,
    pca_project,
)


def _vocabs() -> MedVocabs:
    return MedVocabs(
        diagnoses=Vocab(("<pad>", "<unk>", "icd9cm:A1", "icd9cm:A2", "icd9cm:B1", "icd9cm:428")),
        procedures=Vocab(("<pad>", "<unk>", "icd9pcs:P1")),
        medications=Vocab(("<pad>", "<unk>", "C03C", "B01A")),
        profile=Vocab(("<pad>", "<unk>", "gender=F", "age_band=60-69")),
    )


# words the tiny test backbones' tokenizer knows (tests/conftest.py)
TITLES = {"icd9cm:A1": "k0 k1 w3", "icd9cm:A2": "k0 k1 w3", "icd9cm:B1": "w7 w8 w9 w10",
          "icd9pcs:P1": "k4 w2"}  # fmt: skip


def test_code_text_reads_dictionaries_and_describes_categories():
    assert code_text("diagnoses", "icd9cm:42821") == "Diagnosis: Acute systolic heart failure"
    assert code_text("medications", "C03C") == "Drug class: high-ceiling diuretics"
    assert code_text("profile", "age_band=60-69") == "Patient age band: 60-69"
    # a category without a title of its own: its first member codes' titles
    assert code_text("diagnoses", "icd9cm:428").startswith("Diagnosis: Congestive heart failure")
    assert code_text("diagnoses", "icd9cm:A1", TITLES) == "Diagnosis: k0 k1 w3"
    assert code_text("diagnoses", "icd9cm:nothing") == "Diagnosis: icd9cm:nothing"


def test_code_texts_one_per_table_row_specials_empty():
    v = _vocabs()
    texts = code_texts(v, TITLES)
    assert len(texts) == sum(v.sizes().values())
    assert [i for i, t in enumerate(texts) if not t] == [0, 1, 6, 7, 9, 10, 13, 14]


def test_pca_project_shape_scale_and_excluded_rows():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(30, 12)) @ rng.normal(size=(12, 12))
    rows = np.ones(30, dtype=bool)
    rows[:3] = False
    out = pca_project(states, 4, rows)
    assert out.shape == (30, 4) and out.dtype == np.float32
    assert np.all(out[:3] == 0)
    assert out[3:].std() == pytest.approx(1.0, rel=1e-5)
    # the first direction carries the most variance
    var = out[3:].var(axis=0)
    assert np.all(np.diff(var) <= 1e-6)
    # fewer samples than dim: the missing directions are zero columns
    small = pca_project(states[:3], 8)
    assert small.shape == (3, 8) and np.all(small[:, 3:] == 0)
    with pytest.raises(ValueError, match="dim"):
        pca_project(states, 0)


@pytest.mark.parametrize("backbone", ["llama_dir", "bert_dir"])
def test_title_table_from_a_tiny_backbone_initialises_the_student(backbone, request):
    torch = pytest.importorskip("torch")
    from distill.backbone import TeacherConfig
    from distill.medication.student import LeaderStudent, StudentConfig

    v = _vocabs()
    teacher = TeacherConfig(backbone=request.getfixturevalue(backbone), frozen=True)
    table = code_title_table(v, teacher, dim=8, titles=TITLES)
    n = sum(v.sizes().values())
    assert table.shape == (n, 8)
    # codes with the same title read the same; different titles differ
    np.testing.assert_allclose(table[2], table[3], atol=1e-5)
    assert np.abs(table[2] - table[4]).max() > 1e-3

    torch.manual_seed(0)
    model = LeaderStudent(StudentConfig.from_vocabs(v, dim=8, heads=2, teacher_dim=4))
    before = model.embed.weight.detach().clone()
    init_student_embeddings(model, table)
    after = model.embed.weight.detach()
    specials = [0, 1, 6, 7, 9, 10, 13, 14]
    torch.testing.assert_close(after[specials], before[specials])
    rest = [i for i in range(n) if i not in specials]
    torch.testing.assert_close(after[rest], torch.from_numpy(table[rest]))
    with pytest.raises(ValueError, match="title table"):
        init_student_embeddings(model, table[:, :4])
