"""The 57 MMLU subjects and their categories, as in Hendrycks et al.'s `categories.py`.

Two steps, as in the original: subject → subcategory → category. lm-eval's own table differs on
one subject (it files `anatomy` under STEM); servecmp follows the original paper's grouping.
"""

from __future__ import annotations

STEM = "STEM"
HUMANITIES = "humanities"
SOCIAL_SCIENCES = "social sciences"
OTHER = "other (business, health, misc.)"

CATEGORIES: tuple[str, ...] = (STEM, HUMANITIES, SOCIAL_SCIENCES, OTHER)

SUBCATEGORY_TO_CATEGORY: dict[str, str] = {
    "physics": STEM,
    "chemistry": STEM,
    "biology": STEM,
    "computer science": STEM,
    "math": STEM,
    "engineering": STEM,
    "history": HUMANITIES,
    "philosophy": HUMANITIES,
    "law": HUMANITIES,
    "politics": SOCIAL_SCIENCES,
    "culture": SOCIAL_SCIENCES,
    "economics": SOCIAL_SCIENCES,
    "geography": SOCIAL_SCIENCES,
    "psychology": SOCIAL_SCIENCES,
    "other": OTHER,
    "business": OTHER,
    "health": OTHER,
}

SUBJECT_TO_SUBCATEGORY: dict[str, str] = {
    "abstract_algebra": "math",
    "anatomy": "health",
    "astronomy": "physics",
    "business_ethics": "business",
    "clinical_knowledge": "health",
    "college_biology": "biology",
    "college_chemistry": "chemistry",
    "college_computer_science": "computer science",
    "college_mathematics": "math",
    "college_medicine": "health",
    "college_physics": "physics",
    "computer_security": "computer science",
    "conceptual_physics": "physics",
    "econometrics": "economics",
    "electrical_engineering": "engineering",
    "elementary_mathematics": "math",
    "formal_logic": "philosophy",
    "global_facts": "other",
    "high_school_biology": "biology",
    "high_school_chemistry": "chemistry",
    "high_school_computer_science": "computer science",
    "high_school_european_history": "history",
    "high_school_geography": "geography",
    "high_school_government_and_politics": "politics",
    "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math",
    "high_school_microeconomics": "economics",
    "high_school_physics": "physics",
    "high_school_psychology": "psychology",
    "high_school_statistics": "math",
    "high_school_us_history": "history",
    "high_school_world_history": "history",
    "human_aging": "health",
    "human_sexuality": "culture",
    "international_law": "law",
    "jurisprudence": "law",
    "logical_fallacies": "philosophy",
    "machine_learning": "computer science",
    "management": "business",
    "marketing": "business",
    "medical_genetics": "health",
    "miscellaneous": "other",
    "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy",
    "nutrition": "health",
    "philosophy": "philosophy",
    "prehistory": "history",
    "professional_accounting": "other",
    "professional_law": "law",
    "professional_medicine": "health",
    "professional_psychology": "psychology",
    "public_relations": "politics",
    "security_studies": "politics",
    "sociology": "culture",
    "us_foreign_policy": "politics",
    "virology": "health",
    "world_religions": "philosophy",
}

SUBJECTS: tuple[str, ...] = tuple(sorted(SUBJECT_TO_SUBCATEGORY))

SUBJECT_TO_CATEGORY: dict[str, str] = {
    subject: SUBCATEGORY_TO_CATEGORY[sub] for subject, sub in SUBJECT_TO_SUBCATEGORY.items()
}


def category_of(subject: str | None) -> str | None:
    """The MMLU category of a subject; None for subjects outside MMLU (users' own sets)."""
    return SUBJECT_TO_CATEGORY.get(subject) if subject else None
