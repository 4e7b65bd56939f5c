"""The words sent to the model: CheXOne's task prompts and the CXRTrek stage questions.

CheXOne prompts are verbatim from the model spec (CheXinstruct templates); change them only with
the spec. Stage questions without a CheXOne template follow CXRTrek's example questions.
"""

from __future__ import annotations

# Used in CXRTrek's data; RadDraft's staged reading uses it as the conversation's system prompt.
CXRTREK_SYSTEM_PROMPT = (
    "You are a helpful radiology assistant to help radiologists analyze, interpret medical images "
    "and answer clinical questions."
)
# The stock Qwen2.5-VL default, which CheXOne was trained with (single-prompt use).
QWEN_SYSTEM_PROMPT = "You are a helpful assistant."

FINDINGS_PROMPT = "Write an example findings section for the CXR."
FINDINGS_WITH_INDICATION_PROMPT = (
    'Given the indication: "{indication}", write a structured findings section for the CXR.'
)
IMPRESSION_PROMPT = "Write an example impression section for the CXR"
SUMMARIZE_FINDINGS_PROMPT = "Summarize the following Findings: {findings}"
PROGRESSION_PROMPT = (
    "Write the trajectory of findings by comparing the second image to the first one."
)
TEMPORAL_PROMPT = (
    "You are given two images: one reference image and one new image. Please identify the "
    "progression of {finding}:\n(a) worsening\n(b) stable\n(c) improving"
)
TEMPORAL_OPTIONS = ["worsening", "stable", "improving"]
VIEW_PROMPT = "What is the view of this chest X-ray? Options:\n(a) PA\n(b) AP\n(c) LATERAL"
VIEW_OPTIONS = ["PA", "AP", "LATERAL"]
PHRASE_GROUNDING_PROMPT = "Please locate the following phrase: {phrase}"
ABNORMALITY_GROUNDING_PROMPT = (
    "Locate areas in the chest X-ray where {finding} is present, using bounding box coordinates"
)
# Appended to grounding questions, as in CheXOne's RL data.
GROUNDING_FORMAT_HINT = (
    "\nOutput format:\n<|ref|>target name<|/ref|><|box|>(x1,y1),(x2,y2)<|/box|>\n"
    "Example: <|ref|>pneumothorax<|/ref|><|box|>(12,60),(18,87)<|/box|>\n"
)

QUALITY_QUESTION = "What is the image quality of this chest X-ray?"
QUALITY_OPTIONS = [
    "Adequate for interpretation",
    "Limited (rotation, inspiration, penetration or artifact)",
    "Non-diagnostic",
]
PRESENCE_QUESTION = "Is there {finding} in this chest X-ray?"
PRESENCE_OPTIONS = ["Yes", "No"]
ATTRIBUTES_QUESTION = "Describe the location, severity and appearance of the {finding}."
RELATIONS_QUESTION = "How do the findings on this chest X-ray relate to each other?"
DIFFERENCES_QUESTION = (
    "What are the key differences between the current chest X-ray and the earlier ones?"
)
# When RadDraft holds the prior's signed report, the comparison question carries it, so the
# model compares against what a radiologist actually said rather than its own reading alone.
PRIOR_REPORT_PREFIX = 'The earlier chest X-ray was reported as: "{report}"\n'
TREND_QUESTION = "Based on the chest X-ray analysis, what is the expected course of the findings?"
ADVICE_QUESTION = "Offer recommendations based on the chest X-ray analysis."

# CheXpert's 13 observations (without "No Finding") plus support devices.
DEFAULT_FINDINGS = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

STAGE_NAMES = {
    1: "view and quality",
    2: "findings present",
    3: "attributes and grounding",
    4: "relations",
    5: "comparison with prior",
    6: "trend",
    7: "advice",
    8: "findings and impression",
}


def multiple_choice(question: str, options: list[str]) -> str:
    """CheXOne's multiple-choice layout: ``{question} Options:\\n(A) ...\\n(B) ...``."""
    lines = [f"({chr(ord('A') + i)}) {option}" for i, option in enumerate(options)]
    return f"{question} Options:\n" + "\n".join(lines)


def finding_phrase(label: str) -> str:
    """A label as it reads inside a sentence ("Pleural Effusion" -> "pleural effusion")."""
    return label.strip().lower()
