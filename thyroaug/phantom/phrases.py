"""The phrasebook of the phantom's report writer: every sentence, synonym and surface form.

``reports`` picks from these banks with the case's generator, so editing a bank (or its order)
changes the reports a seed gives.
"""

from __future__ import annotations

SIZE_PROSE = {
    "small": (
        "The thyroid gland is small.",
        "The gland appears small.",
        "Both thyroid lobes are small.",
        "The thyroid is reduced in size.",
        "The gland is smaller than normal.",
    ),
    "normal": (
        "The thyroid gland is normal in size.",
        "The gland is of normal size and shape.",
        "The thyroid is not enlarged.",
        "The thyroid gland is normal in size, shape and position.",
        "Gland size is within normal limits.",
    ),
    "mildly enlarged": (
        "The thyroid gland is mildly enlarged.",
        "There is slight enlargement of the thyroid gland.",
        "The gland is minimally enlarged.",
        "The thyroid is borderline enlarged.",
    ),
    "enlarged": (
        "The thyroid gland is enlarged.",
        "The gland is moderately enlarged.",
        "There is enlargement of both thyroid lobes.",
        "The thyroid is enlarged.",
    ),
    "markedly enlarged": (
        "The thyroid gland is markedly enlarged.",
        "There is gross enlargement of the gland.",
        "The gland is considerably enlarged.",
        "The thyroid is massively enlarged.",
    ),
}
SIZE_ADJ = {
    "small": ("small",),
    "normal": ("normal-sized", "normal sized"),
    "mildly enlarged": ("mildly enlarged", "slightly enlarged"),
    "enlarged": ("enlarged", "moderately enlarged"),
    "markedly enlarged": ("markedly enlarged", "grossly enlarged"),
}
SIZE_TERSE = {
    "small": ("Thyroid small.", "Small gland."),
    "normal": ("Thyroid normal size.", "Normal-sized gland.", "Gland not enlarged."),
    "mildly enlarged": ("Thyroid mildly enlarged.", "Gland slightly enlarged."),
    "enlarged": ("Thyroid enlarged.", "Enlarged gland."),
    "markedly enlarged": ("Thyroid markedly enlarged.", "Grossly enlarged gland."),
}
SIZE_VALUE = {
    "small": ("small",),
    "normal": ("normal",),
    "mildly enlarged": ("mildly enlarged", "slightly enlarged"),
    "enlarged": ("enlarged",),
    "markedly enlarged": ("markedly enlarged", "grossly enlarged"),
}

UPTAKE_PROSE = {
    "absent": (
        "There is no appreciable tracer uptake in the thyroid bed.",
        "The thyroid gland is not visualized.",
        "Thyroid trapping is absent.",
        "No thyroid uptake is seen.",
    ),
    "very low": (
        "Tracer uptake in the thyroid is very low.",
        "Thyroid uptake is markedly reduced.",
        "Only very faint thyroid activity is seen.",
        "The thyroid is barely visualized.",
    ),
    "low": (
        "Thyroid uptake is reduced.",
        "Tracer uptake is low.",
        "There is decreased tracer uptake in the gland.",
        "The thyroid is faintly visualized.",
    ),
    "normal": (
        "Tracer uptake is normal.",
        "Thyroid uptake is within normal limits.",
        "Uptake of pertechnetate is physiological.",
        "The gland concentrates the tracer normally.",
    ),
    "increased": (
        "Tracer uptake is increased.",
        "Thyroid uptake is elevated.",
        "There is increased tracer uptake.",
        "Uptake is raised.",
    ),
    "intense": (
        "Tracer uptake is intense.",
        "Thyroid uptake is markedly increased.",
        "The gland shows avid tracer uptake.",
        "There is intense tracer uptake.",
    ),
}
UPTAKE_ADJ = {
    "very low": ("very low", "very faint", "markedly reduced"),
    "low": ("reduced", "low", "decreased"),
    "normal": ("normal",),
    "increased": ("increased", "elevated"),
    "intense": ("intense", "avid", "markedly increased"),
}
UPTAKE_VALUE = {
    "absent": ("absent", "nil"),
    "very low": ("very low", "markedly reduced"),
    "low": ("low", "reduced"),
    "normal": ("normal",),
    "increased": ("increased", "raised"),
    "intense": ("intense", "markedly increased"),
}
UPTAKE_ARROWS = {"very low": "↓↓", "low": "↓", "increased": "↑", "intense": "↑↑"}

DIST_PROSE = {
    "homogeneous": (
        "Tracer distribution is homogeneous.",
        "Uptake is uniform throughout both lobes.",
        "The activity is evenly distributed.",
        "Distribution of tracer is homogeneous.",
    ),
    "mildly heterogeneous": (
        "Tracer distribution is mildly heterogeneous.",
        "Uptake is slightly inhomogeneous.",
        "Distribution is subtly heterogeneous.",
    ),
    "heterogeneous": (
        "Tracer distribution is heterogeneous.",
        "Uptake is inhomogeneous.",
        "Distribution within the gland is non-uniform.",
        "Uptake is irregular and heterogeneous.",
    ),
    "patchy": (
        "Tracer uptake is patchy.",
        "Distribution is patchy and mottled.",
        "There is patchy tracer distribution.",
    ),
}
DIST_ADJ = {
    "homogeneous": ("homogeneous", "uniform"),
    "mildly heterogeneous": ("mildly heterogeneous", "slightly inhomogeneous"),
    "heterogeneous": ("heterogeneous", "inhomogeneous"),
    "patchy": ("patchy", "mottled"),
}

NO_NODULES_PROSE = (
    "No focal nodules are seen.",
    "There are no hot or cold nodules.",
    "No cold areas are identified.",
    "No focal abnormality is seen.",
    "There is no evidence of nodularity.",
    "No discrete nodule is identified.",
)
NO_NODULES_TERSE = ("No nodules.", "No focal lesions.", "Nodules: nil.", "No hot/cold nodules.")

KIND_ADJ = {
    "hot": ("hot", "hyperfunctioning", "autonomous"),
    "cold": ("cold", "hypofunctioning", "photopenic", "non-functioning"),
    "warm": ("warm", "isofunctioning"),
    "mixed": ("mixed hot and cold", "hot and cold"),
}
SIDE_PLACE = {
    "right": (
        "in the right lobe",
        "in the lower pole of the right lobe",
        "in the upper pole of the right lobe",
        "in the mid right lobe",
    ),
    "left": (
        "in the left lobe",
        "in the lower pole of the left lobe",
        "in the upper pole of the left lobe",
        "in the mid left lobe",
    ),
    "bilateral": ("in both lobes", "bilaterally", "scattered through both lobes"),
    "isthmus": ("in the isthmus", "in the region of the isthmus"),
}
SIDE_TERSE = {
    "right": ("right lobe", "R lobe"),
    "left": ("left lobe", "L lobe"),
    "bilateral": ("both lobes", "bilateral"),
    "isthmus": ("isthmus",),
}

BACKGROUND_PROSE = {
    "low": (
        "Background activity is low.",
        "There is low background activity.",
        "Minimal soft tissue background.",
        "The background is clean.",
    ),
    "normal": ("Background activity is normal.", "Normal soft tissue background."),
    "high": (
        "Background activity is high.",
        "There is increased background activity.",
        "The background is raised.",
        "Blood-pool background activity is increased.",
    ),
}
SALIVARY_PROSE = {
    "faint": (
        "The salivary glands are faintly seen.",
        "Salivary gland uptake is faint.",
        "The salivary glands are barely visualized.",
    ),
    "normal": (
        "The salivary glands are visualized normally.",
        "Salivary glands are visible.",
        "Normal salivary gland uptake.",
        "The salivary glands are seen.",
    ),
    "prominent": (
        "The salivary glands are prominent.",
        "The salivary glands are relatively prominent.",
        "There is prominent salivary gland uptake.",
        "Salivary gland activity is increased.",
    ),
}
SALIVARY_VALUE = {
    "faint": ("faint", "faintly seen", "barely seen"),
    "normal": ("visible", "normal", "seen"),
    "prominent": ("prominent", "relatively prominent"),
}
PYRAMIDAL_PROSE = {
    True: (
        "A pyramidal lobe is visualized.",
        "A pyramidal lobe is present.",
        "There is a prominent pyramidal lobe.",
        "Note is made of a pyramidal lobe.",
    ),
    False: (
        "No pyramidal lobe is seen.",
        "A pyramidal lobe is not visualized.",
        "There is no pyramidal lobe.",
    ),
}
PYRAMIDAL_TERSE = {
    True: ("Pyramidal lobe seen.", "Pyramidal lobe: yes."),
    False: ("No pyramidal lobe.", "Pyramidal lobe: no."),
}

DX_NOUNS = {
    "DG": (
        "Graves' disease",
        "diffuse toxic goiter",
        "diffuse toxic goiter (Graves' disease)",
        "a diffuse hyperplastic goiter",
        "Basedow's disease",
    ),
    "NG": ("a nodular goiter", "nodular thyroid disease"),
    "NL": ("a normal thyroid scan", "a normally functioning thyroid gland"),
    "TI": (
        "subacute thyroiditis",
        "painless thyroiditis",
        "silent thyroiditis",
        "destructive thyroiditis",
        "de Quervain's thyroiditis",
        "thyroiditis",
    ),
}
DX_PLAIN = {
    "DG": (
        "Diffuse toxic goiter, consistent with Graves' disease.",
        "Graves' disease.",
        "Diffuse toxic goiter (Graves' disease).",
        "Diffuse goiter with features of Graves' disease.",
    ),
    "NG": ("Nodular goiter.", "Nodular thyroid disease."),
    "NL": (
        "Normal thyroid scan.",
        "Normal study.",
        "Normal thyroid scintigraphy.",
        "No scintigraphic abnormality.",
        "Normal appearances of the thyroid.",
    ),
    "TI": (
        "Subacute thyroiditis.",
        "Painless (silent) thyroiditis.",
        "Thyroiditis, probably subacute.",
        "Destructive thyroiditis.",
    ),
}
HEDGES = (
    "Appearances consistent with {dx}.",
    "Findings in keeping with {dx}.",
    "Scintigraphic appearances suggestive of {dx}.",
    "Probably {dx}.",
    "Most likely {dx}.",
    "The appearances are compatible with {dx}.",
)
NEGATED_OTHERS = {
    "DG": ("No evidence of thyroiditis.", "Thyroiditis is unlikely."),
    "NG": ("No features of Graves' disease.",),
    "NL": ("No evidence of thyroiditis or Graves' disease.", "No features of thyroiditis."),
    "TI": ("Graves' disease is unlikely.", "No evidence of Graves' disease."),
}
HISTORY = (
    "{age}-year-old {sex} with palpitations.",
    "{age}-year-old {sex}; raised free T4, suppressed TSH.",
    "Neck swelling for 6 months.",
    "Known hypertension, on amlodipine.",
    "Query hyperthyroidism.",
    "?Graves' disease.",
    "Query thyroiditis following a viral illness.",
    "Weight loss and tremor.",
    "Follow-up of a thyroid nodule.",
    "Previous appendectomy, otherwise well.",
    "Thyrotoxic, ?cause.",
)
HISTORY_HEADS = ("Clinical history", "History", "Indication", "Clinical details", "Referral")
TECHNIQUE = (
    "Anterior pinhole images of the neck were acquired {t} after intravenous injection of "
    "{dose} MBq technetium-99m pertechnetate.",
    "Technetium-99m pertechnetate thyroid scintigraphy, anterior view, pinhole collimator.",
    "Following intravenous administration of {dose} MBq technetium-99m pertechnetate, static "
    "anterior images of the neck were obtained at {t}.",
    "{dose} MBq technetium-99m pertechnetate intravenously; anterior pinhole image at {t}.",
)
RECOMMEND = (
    "Suggest correlation with thyroid function tests.",
    "Ultrasound correlation is recommended.",
    "Clinical correlation advised.",
    "Please correlate with TSH and free T4.",
)
DOCTORS = ("Smith", "Jones", "Patel", "Ahmadi", "Garcia", "Muller", "Rossi", "Kim", "Novak")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 15: "fifteen", 20: "twenty"}

BRITISH = (
    (r"goiter", "goitre"),
    (r"Goiter", "Goitre"),
    (r"visualiz", "visualis"),
    (r"appendectomy", "appendicectomy"),
    (r"\bfavor", "favour"),
    (r"\bnormalized", "normalised"),
)


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"
