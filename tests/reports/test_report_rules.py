"""Rule-based report reading on hand-written reports (phrasings the phantom writer never uses)."""

from __future__ import annotations

import itertools

import pytest

from thyroaug.reports.findings import Findings
from thyroaug.reports.rules import UPTAKE_PERCENT_BINS, extract_findings, uptake_from_percent

# (report, expected answers; fields not listed must come out None)
HAND_WRITTEN = [
    (
        "THYROID SCAN\nRadiopharmaceutical: 5 mCi Tc-99m pertechnetate\nThe thyroid is enlarged "
        "bilaterally with diffusely increased radiotracer concentration. There is no focal area "
        "of increased or decreased uptake. Salivary gland activity is decreased relative to the "
        "thyroid.\nIMPRESSION:\n1. Diffusely enlarged and hyperactive thyroid gland, consistent "
        "with Graves disease.",
        dict(
            gland_size="enlarged", uptake="increased", nodules=0, salivary="faint", impression="DG"
        ),
    ),
    (
        "Findings: The left lobe is replaced by a large photopenic area. The right lobe shows "
        "normal uptake.\nImpression: Cold nodule occupying the left lobe. Malignancy cannot be "
        "excluded; FNA advised.",
        dict(uptake="normal", nodules=1, nodule_kind="cold", nodule_side="left", impression="NG"),
    ),
    (
        "Study demonstrates poor visualisation of the thyroid gland with increased background "
        "activity. The salivary glands are well visualised. The appearances would be in keeping "
        "with a thyroiditis. Differential: recent iodine load.",
        dict(uptake="low", background="high", salivary="normal", impression="TI"),
    ),
    (
        "Normal thyroid scan. Both lobes are normal in size and shape with uniform tracer "
        "distribution. No focal hot or cold nodule.",
        dict(gland_size="normal", distribution="homogeneous", nodules=0, impression="NL"),
    ),
    (
        "Enlarged gland with a dominant hot nodule in the upper pole of the right lobe and "
        "several smaller cold nodules in the left lobe. Impression: toxic multinodular goitre.",
        dict(
            gland_size="enlarged",
            nodules=3,
            nodule_kind="mixed",
            nodule_side="bilateral",
            impression="NG",
        ),
    ),
    (
        "Findings:\nThe thyroid gland is slightly enlarged. Patchy uptake throughout. No discrete "
        "nodules. Low-normal background.\nConclusion: Hashimoto's thyroiditis likely.",
        dict(
            gland_size="mildly enlarged",
            distribution="patchy",
            nodules=0,
            background="low",
            impression="TI",
        ),
    ),
    (
        "Tc-99m thyroid: Intense homogeneous uptake in an enlarged thyroid, with pyramidal lobe. "
        "Suppressed background. Impression: consistent with Graves.",
        dict(
            gland_size="enlarged",
            uptake="intense",
            distribution="homogeneous",
            background="low",
            pyramidal_lobe=True,
            impression="DG",
        ),
    ),
    (
        "Impression: Normal study. No nodules. No pyramidal lobe.",
        dict(nodules=0, pyramidal_lobe=False, impression="NL"),
    ),
    (
        "The gland is of normal size. There is a 3 cm area of absent tracer uptake in the right "
        "lobe mid pole. Remainder of the gland is unremarkable. Impression: solitary cold "
        "nodule; ultrasound recommended.",
        dict(
            gland_size="normal", nodules=1, nodule_kind="cold", nodule_side="right", impression="NG"
        ),
    ),
    (
        "Scan: gland barely visible, tracer uptake 0.2 %. Salivaries prominent. => thyroiditis "
        "(subacute?)",
        dict(uptake="very low", salivary="prominent", impression="TI"),
    ),
    (
        "The thyroid gland is not enlarged and demonstrates homogeneous uptake. No evidence of "
        "Graves' disease, thyroiditis or nodular disease. Impression: Normal.",
        dict(gland_size="normal", distribution="homogeneous", impression="NL"),
    ),
    ("Impression: Multinodular goiter without dominant nodule.", dict(nodules=3, impression="NG")),
    (
        "Findings: Right lobe hot nodule with suppression of the left lobe. IMP: autonomously "
        "functioning thyroid nodule (toxic adenoma), right.",
        dict(nodules=1, nodule_kind="hot", nodule_side="right", impression="NG"),
    ),
    (
        "Indication: neck lump, TSH normal.\nTechnique: Anterior pinhole, 20 min post 150 MBq "
        "TcO4.\nReport: Normal-sized gland. A 15 mm cold nodule at the left lower pole, "
        "corresponding to the palpable lump. Otherwise homogeneous uptake.\nConclusion: cold "
        "nodule left lobe - needs US/FNA.",
        dict(
            gland_size="normal",
            distribution="homogeneous",
            nodules=1,
            nodule_kind="cold",
            nodule_side="left",
            impression="NG",
        ),
    ),
    (
        "Thyroid imaging following 3 mCi Tc-99m. Gland is small with faint heterogeneous "
        "trapping. Increased salivary gland activity relative to the thyroid. Impression: "
        "findings favor subacute thyroiditis over Graves' disease.",
        dict(
            gland_size="small",
            uptake="low",
            distribution="heterogeneous",
            salivary="prominent",
            impression="TI",
        ),
    ),
    (
        "Thyroid: not seen. Salivary glands: intense. Background: raised. Conclusion: "
        "destructive thyroiditis.",
        dict(uptake="absent", salivary="prominent", background="high", impression="TI"),
    ),
    (
        "There are three cold nodules within the right lobe, the largest measuring approximately "
        "2 cm. The left lobe is unremarkable. Impression: nodular goitre; suggest ultrasound.",
        dict(nodules=3, nodule_kind="cold", nodule_side="right", impression="NG"),
    ),
    (
        "Clinical: palpitations, low TSH. Tc scan: gland normal size, uptake ↑↑, homogeneous, "
        "bkg ↓. No pyr lobe. Dx: GD.",
        dict(
            gland_size="normal",
            uptake="intense",
            distribution="homogeneous",
            background="low",
            pyramidal_lobe=False,
            impression="DG",
        ),
    ),
    (
        "Thyroid scan: Normal thyroid uptake. There is a hot nodule in the right lobe. There is "
        "also a cold nodule in the left lobe. IMPRESSION: Multinodular goiter with hot and cold "
        "nodules.",
        dict(
            uptake="normal",
            nodules=2,
            nodule_kind="mixed",
            nodule_side="bilateral",
            impression="NG",
        ),
    ),
    (
        "Dear Dr Brown,\nMany thanks for referring Mrs X with ?Graves' disease. Her scan shows a "
        "normal-sized gland with patchy, very low uptake and raised background; the salivary "
        "glands are relatively prominent. In conclusion, the appearances are those of a "
        "thyroiditis rather than Graves' disease.\nKind regards,\nDr Y (Graves clinic)",
        dict(
            gland_size="normal",
            uptake="very low",
            distribution="patchy",
            background="high",
            salivary="prominent",
            impression="TI",
        ),
    ),
]


@pytest.mark.parametrize(("report", "expected"), HAND_WRITTEN)
def test_hand_written_reports(report, expected):
    assert extract_findings(report) == Findings(**expected)


@pytest.mark.parametrize(
    ("report", "impression"),
    [
        ("Impression: thyroiditis. Graves' disease is unlikely.", "TI"),
        ("Impression: no evidence of thyroiditis; Graves' disease.", "DG"),
        ("Conclusion: thyroiditis rather than Graves' disease.", "TI"),
        ("Conclusion: Graves' disease is not favoured; likely painless thyroiditis.", "TI"),
        ("History: known thyroiditis.\nImpression: normal scan.", "NL"),
        ("Impression: Normal.\nRecommend ultrasound to exclude thyroiditis.", "NL"),
        ("Intense diffuse uptake. Appearances are typical of Basedow's disease.", "DG"),
        ("Normal scan.", "NL"),
        ("=> MNG", "NG"),
        ("Imp: toxic adenoma.", "NG"),
        ("The study was technically limited.", None),
    ],
)
def test_impression_handles_negation_sections_and_synonyms(report, impression):
    assert extract_findings(report).impression == impression


@pytest.mark.parametrize(
    ("report", "nodules", "kind", "side"),
    [
        ("No nodules.", 0, None, None),
        ("No hot, cold or warm nodules.", 0, None, None),
        ("No cold areas. A hot nodule in the lt lobe.", 1, "hot", "left"),
        ("Nodules: nil.", 0, None, None),
        ("Nodules x2, cold, rt lobe.", 2, "cold", "right"),
        ("A couple of photopenic defects in the isthmus.", 2, "cold", "isthmus"),
        ("Four hypofunctioning nodules, bilat.", 3, "cold", "bilateral"),
        ("A cold nodule in each lobe.", 2, "cold", "bilateral"),
        ("A 12 mm warm nodule, R lobe. The nodule is well defined.", 1, "warm", "right"),
        ("Two nodules in the left lobe. Both are hyperfunctioning.", 2, "hot", "left"),
        ("Several nodules of mixed function throughout both lobes.", 3, "mixed", "bilateral"),
        ("The gland is normal.", None, None, None),
    ],
)
def test_nodule_questions(report, nodules, kind, side):
    f = extract_findings(report)
    assert (f.nodules, f.nodule_kind, f.nodule_side) == (nodules, kind, side)


@pytest.mark.parametrize(
    ("report", "pyramidal"),
    [
        ("A pyramidal lobe is seen.", True),
        ("Prominent pyramidal lobe.", True),
        ("Pyr. lobe: yes.", True),
        ("No pyramidal lobe.", False),
        ("Pyramidal lobe not visualised.", False),
        ("Pyramidal lobe: -", False),
        ("Normal gland.", None),
    ],
)
def test_pyramidal_lobe(report, pyramidal):
    assert extract_findings(report).pyramidal_lobe is pyramidal


@pytest.mark.parametrize(
    ("report", "uptake", "background", "salivary"),
    [
        ("Intense uptake with low background.", "intense", "low", None),
        ("Bkg activity is high; SGs prominent; uptake very low.", "very low", "high", "prominent"),
        ("Thyroid uptake 12.5% (normal 0.5-2.5%).", "intense", None, None),
        ("Pertechnetate uptake: 1.2%.", "normal", None, None),
        ("Uptake: nil. Salivary glands not seen.", "absent", None, "faint"),
        ("No increased uptake. Salivary glands visible.", None, None, "normal"),
        ("The gland shows avid trapping; background clean.", "intense", "low", None),
    ],
)
def test_levels_are_attributed_to_the_right_structure(report, uptake, background, salivary):
    f = extract_findings(report)
    assert (f.uptake, f.background, f.salivary) == (uptake, background, salivary)


@pytest.mark.parametrize(
    ("report", "size", "distribution"),
    [
        ("The gland is not enlarged.", "normal", None),
        ("Massively enlarged goitre, mottled uptake.", "markedly enlarged", "patchy"),
        (
            "Slight enlargement; uptake not entirely homogeneous.",
            "mildly enlarged",
            "mildly heterogeneous",
        ),
        ("Atrophic gland with uneven uptake.", "small", "heterogeneous"),
        ("A small cold nodule; otherwise uniform uptake.", None, "homogeneous"),
    ],
)
def test_size_and_distribution(report, size, distribution):
    f = extract_findings(report)
    assert (f.gland_size, f.distribution) == (size, distribution)


def test_empty_report_states_nothing():
    assert extract_findings("") == Findings()
    assert extract_findings("  \n ") == Findings()


def test_uptake_percent_bins_are_contiguous():
    bins = list(UPTAKE_PERCENT_BINS.values())
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bins))
    for word, (low, high) in UPTAKE_PERCENT_BINS.items():
        assert uptake_from_percent(low) == word
        assert uptake_from_percent((low + high) / 2) == word
