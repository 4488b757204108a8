"""The benchmarks' protocol strings, reproduced character for character (em dashes and curly quotes too).

Sources: Inf-Streams-Eval (broadcaster query, A/B judge, the GPT-4o-mini baseline) and LiveSports-3K-CC
(commentator query, A/B judge), as docs/ORIGINAL.md §Evaluation protocols describes them, i.e. the original's
`eval_streaming_qwen.py`, `judge.py`, `generate_gpt.py`, `distributed_generate_streaming.py` and
`llm_judge.py`. They are protocol constants: changing any character changes what the judge sees.
"""
from __future__ import annotations

# ---------------------------------------------------------------------------- Inf-Streams-Eval
# The broadcaster query of the first second: two lines joined by "\n" (em dash, curly apostrophe).
BROADCASTER_QUERY = "\n".join([
    "Act as a live sports broadcaster: in short present-tense lines, call the on-screen play first, then one brief "
    "courtside insight; vary your energy with the moment and include visible score/time.",
    "Stay perfectly synced to the video\u2014only describe what\u2019s visible, never invent names or facts (use "
    "positions/numbers if unknown), and immediately correct yourself if the scoreboard contradicts you.",
])

# The A/B judge's system prompt: a leading newline, every line indented by 4 spaces, blank lines between the
# blocks (one of them holds the 4 spaces of the indent), and a trailing indent, as the original's triple-quoted
# string has them.
JUDGE_SYSTEM = (
    "\n"
    "    You are a strict A/B evaluator for sports video commentary.\n"
    "\n"
    "    Rules:\n"
    "    1) You MUST output exactly one uppercase letter: \u201cA\u201d or \u201cB\u201d.\n"
    "\n"
    "    2) Evaluate in this order:\n"
    "    \n"
    "    Broadcast tone & pacing: Vary the emotion; deliver live play-by-play or brief, in-the-moment analysis. "
    "Not just scene description. Use a real-time broadcast voice that puts the audience courtside.\n"
    "\n"
    "    Consistency & accuracy: Every detail must stay synchronized with the visuals and never contradict them.\n"
    "    "
)

JUDGE_USER = ("Reference transcript (Provide a reference for the tone and on-screen information):\n{ref}\n\n"
              "Candidate A:\n{a}\n\nCandidate B:\n{b}\n\n")
JUDGE_MAX_CHARS = 8000  # ref, A and B are each `.strip()[:8000]`

# The GPT-4o-mini baseline generator (`generate_gpt.py`).
GPT_SYSTEM = "\n".join([
    "You are a live, precise sports commentator.",
    "Speak in vivid, present-tense play-by-play as if on air.",
    "Return PLAIN TEXT ONLY \u2014 no Markdown, lists, headings, code fences, or emojis.",
    "Describe what is clearly visible; avoid guessing.",
    "Use concise, energetic sentences (2\u20136). Respond in the query language.",
])
GPT_USER = "Describe the video.\nTime range: {s:.2f}s ~ {e:.2f}s. Frames sampled at 0.25 fps (capped)."

# ---------------------------------------------------------------------------- LiveSports-3K-CC
COMMENTATOR_QUERY = ("You are an expert video commentator providing real-time, insightful, and engaging commentary on "
                     "visual content.\n")
TITLE_LINE = 'This is a video titled "{title}".\n'

LIVESPORTS_JUDGE = (
    "You are an expert in video commentary. Your task is to review two commentaries (Commentary A and Commentary B), "
    "and select the one that better aligns with the human commentary. You should consider the criteria:\n"
    "1. Semantic Alignment: The commentary should convey the same meaning, details, and key points as the human "
    "commentary.\n"
    "If the above criteria is not enough to judge, then consider:\n"
    "2. Stylistic Consistency: The commentary should maintain a tone, word choice, and structure similar to the human "
    "commentary.\n"
    "\n---Commentary A---\n{a}\n----------\n"
    "\n---Commentary B---\n{b}\n----------\n"
    "\n---Human Commentary---\n{gt}\n----------\n"
    '\nYour response should be "Commentary A is better aligned with the human commentary" or "Commentary B is better '
    'aligned with the human commentary".\n'
)
# The two answers the LiveSports judge is told to give (the local judge scores exactly these).
LIVESPORTS_ANSWERS = ("Commentary A is better aligned with the human commentary",
                      "Commentary B is better aligned with the human commentary")


def commentator_query(title: str | None) -> str:
    """The LiveSports-3K-CC query: the commentator prompt, plus the title line when there is a title."""
    return COMMENTATOR_QUERY + (TITLE_LINE.format(title=title) if title else "")


def judge_messages(ref: str, a: str, b: str) -> list[dict]:
    """The Inf-Streams-Eval judge's chat: system prompt, then the user message with ref/A/B cut to 8,000 chars."""
    cut = lambda s: s.strip()[:JUDGE_MAX_CHARS]  # noqa: E731
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_USER.format(ref=cut(ref), a=cut(a), b=cut(b))}]


def parse_ab(reply: str | None) -> str:
    """The Inf-Streams-Eval parse: "A" if the stripped, upper-cased reply starts with A, else "B" (empty too)."""
    return "A" if (reply or "").strip().upper().startswith("A") else "B"


def livesports_messages(a: str, b: str, gt: str) -> list[dict]:
    """The LiveSports-3K-CC judge's chat: one user message (no system prompt, no truncation)."""
    return [{"role": "user", "content": LIVESPORTS_JUDGE.format(a=a, b=b, gt=gt)}]


def parse_livesports(reply: str | None) -> str:
    """The LiveSports-3K-CC parse: "A" if "Commentary A" occurs, else "B" if "Commentary B" does, else "tie"."""
    reply = reply or ""
    return "A" if "Commentary A" in reply else "B" if "Commentary B" in reply else "tie"
