"""How each benchmark's original asks and scores its questions: prompt strings, answer prefixes, frame
sampling, option tokens and answer matchers, as a declarative table keyed by benchmark name.

Every string here is a protocol constant reproduced exactly from the original (cited per constant):
OVO-Bench (the LiveCC-derived evaluator StreamingVLM runs, `streaming_vlm/eval/ovobench/`) and Video-MME,
LongVideoBench, MVBench (through StreamingVLM's vendored VLMEvalKit); docs/ORIGINAL.md §Evaluation protocols.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

# ---------------------------------------------------------------------------------------------- OVO-Bench
# `distributed_evaluate_ovobench.py`: MCQ text = q + "\n" + "\n".join(options) + this postfix; answer prefix after
# `<|im_start|>assistant\n`.
OVO_MCQ_POSTFIX = "\nPlease select the correct answer."
OVO_ANSWER_PREFIX = "The answer is:\n"
# `distributed_evaluate_ovobench.py`: last-position logits at the last token of "\n" + o for these 17 strings.
OVO_OPTIONS = ("No", "Yes", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "A", "B", "C", "D", "E")
OVO_OPTION_LEAD = "\n"
OVO_LETTERS = ("A", "B", "C", "D", "E")
# `distributed_evaluate_ovobench.py`: Real-time = OCR ACR ATR STU FPD OJR; Backward = EPM ASI HLD;
# Forward-active = REC SSR CRR.
OVO_GROUPS = {
    "realtime": ("OCR", "ACR", "ATR", "STU", "FPD", "OJR"),
    "backward": ("EPM", "ASI", "HLD"),
    "forward": ("REC", "SSR", "CRR"),
}
# The forward-active questions embed a long instruction (`transfer_annotation_format.py`,
# which StreamingVLM copies from LiveCC: showlab/livecc evaluation/ovobench/transfer_annotation_format.py).
# Typos ("certaintype", "You're task", "i.e frames") are the original's and are kept.
OVO_CRR_TEMPLATE = (
    "You're responsible of answering questions based on the video content. The following question are relevant "
    "to the latest frames, i.e. the end of the video.\n\n{question}\n\nDecide whether existing visual content, "
    "especially latest frames, i.e frames that near the end of the video, provide enough information for answering "
    "the question.\nReturn \"Yes\" if existing visual content has provided enough information;\nReturn \"No\" "
    "otherwise.")
OVO_REC_TEMPLATE = (
    "You're watching a video in which people may perform a certaintype of action repetitively. The person performing "
    "are referred to as 'they' in the following statement. You're task is to count how many times did different "
    "people in the video perform this kind of action in total.\nNow, answer the following question:\n\nHow many "
    "times did they {activity}?\n\nYour response type should be INT, for example, 0/1/2/3..")
OVO_SSR_TEMPLATE = (
    "You're watching a tutorial video which contain a sequential of steps. The following is one step from the whole "
    "procedures:\n\n{step}\n\nYour task is to decide: Is the man/woman in the video currently carrying out this "
    "step?\nReturn \"Yes\" if the man/woman in the video is currently performing this step;\nReturn \"No\" if not.")
OVO_YES_NO = ("No", "Yes")  # test_info type 0 / 1
OVO_REC_ANSWERS = tuple(str(i) for i in range(11))  # count 10 is unreachable by the 17-way argmax

# --------------------------------------------------------------------------------- VLMEvalKit benchmarks
# VLMEvalKit's prompts (text items concatenated with no separator, one user turn).
VIDEOMME_PROMPT = ("\nThese are the frames of a video. Select the best answer to the following multiple-choice "
                   "question based on the video. Respond with only the letter (A, B, C, or D) of the correct option.\n")
VIDEOMME_QUESTION = "Question: {question}\n{options}\nAnswer: "
LVB_POSTFIX = "\nAnswer with the option's letter from the given choices directly."
MVBENCH_SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
                  "movement of objects, and the action and pose of persons. Based on your observations, select the "
                  "best option that accurately addresses the question.\n")
MVBENCH_POSTFIX = "\nOnly give the best option."
MVBENCH_ANSWER_CUE = "Best option:("
# VLMEvalKit's `qwen2_vl/model.py`: only tokens decoding to A-F/Yes/No (bare, space-prefixed or "▁"-prefixed)
# may be generated.
RESTRICTED_WORDS = ("A", "B", "C", "D", "E", "F", "Yes", "No")
RESTRICTED_LEADS = ("", " ", "\u2581")

# VLMEvalKit's "StreamingVLM" config (`vlmeval/config.py`) and qwen-vl-utils' frame rules: pixel budgets of
# qwen-vl-utils under VLMEvalKit.
VLM_MIN_PIXELS = 128 * 28 * 28
VLM_MAX_PIXELS = 768 * 28 * 28
VLM_TOTAL_PIXELS = 24576 * 28 * 28
VLM_MAX_FRAMES = 768
# `distributed_evaluate_ovobench.py`: LiveCC's OVO-Bench sampler (2 frames per second of clip, at most 480).
OVO_FPS = 2.0
OVO_MAX_FRAMES = 480
OVO_MIN_PIXELS = 100 * 28 * 28
OVO_TOTAL_PIXELS = 77_070_336
OVO_MAX_PIXELS_FLOOR = 82_320


def floor_even(x: float) -> int:
    """The largest even integer <= x (qwen-vl-utils' floor_by_factor(x, 2))."""
    return int(x // 2) * 2


# ---------------------------------------------------------------------------------------------- matchers
def ovo_prefix_match(response: str, answer: str) -> bool:
    """The original's OVO-Bench check (`distributed_evaluate_ovobench.py`): `response[:len(answer)] == answer`."""
    return response[:len(answer)] == answer


def first_letter_match(letters: str) -> Callable[[str, str], bool]:
    """Video-MME / LVB (VLMEvalKit): the first character of `letters` found in the response equals the answer."""
    pat = re.compile(f"[{letters}]")

    def match(response: str, answer: str) -> bool:
        m = pat.search(response)
        return m is not None and m.group(0) == answer

    return match


def mvbench_match(response: str, answer: str) -> bool:
    """VLMEvalKit's MVBench check_ans: the response's first word, lower-cased, dots removed, is a substring of the
    answer's "(x)" token, or that token is a substring of the first word. `answer` is the letter."""
    words = response.strip().lower().split(" ")
    pred, gt = words[0], f"({answer.lower()})"
    return pred.replace(".", "") in gt or gt in pred


def ovo_official_correct(task: str, response: str, truth: dict) -> bool:
    """The official OVO-Bench scorer (OVO-Bench's own `utils/OVOBenchScore.py`) on a free response.

    truth: {"letter": "B"} for multiple choice, {"count": 3} for REC, {"type": 0|1} for SSR/CRR.
    Multiple choice: the letter is a substring; REC: all digit runs joined equal the count; SSR/CRR: "N"/"Y"
    exactly, else "No"/"Yes" is a substring.
    """
    if task == "REC":
        return "".join(re.findall(r"\d+", response)) == str(truth["count"])
    if task in ("SSR", "CRR"):
        kind = int(truth["type"])
        if response == ("N", "Y")[kind]:
            return True
        return OVO_YES_NO[kind] in response
    return truth["letter"] in response


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One benchmark's original protocol.

    scoring: "ovo17" (argmax over OVO_OPTIONS' tokens, the response is the option string) or "restricted"
    (greedy over tokens decoding to RESTRICTED_WORDS, the response is the token's text, as max_new_tokens=1).
    frames: "ovo" (LiveCC's 2-per-second clip sampler), "1fps" or "64" (qwen-vl-utils under VLMEvalKit).
    answer_prefix: text after `<|im_start|>assistant\\n`. match(response, answer) -> correct.
    group_mean: "tasks" = a group's score is the unweighted mean of its task accuracies (OVO-Bench);
    "questions" = the mean over its questions. overall: "tasks" (mean of task accuracies, the official
    OVO-Bench total) or "questions" (mean over all questions, VLMEvalKit).
    """

    name: str
    scoring: str
    frames: str
    answer_prefix: str
    match: Callable[[str, str], bool]
    group_mean: str
    overall: str


PROTOCOLS = {
    "ovo": Protocol("OVO-Bench", "ovo17", "ovo", OVO_ANSWER_PREFIX, ovo_prefix_match, "tasks", "tasks"),
    "lvb": Protocol("LongVideoBench", "restricted", "1fps", "", first_letter_match("ABCDE"), "questions",
                    "questions"),
    "videomme": Protocol("Video-MME", "restricted", "1fps", "", first_letter_match("ABCD"), "questions",
                         "questions"),
    "mvbench": Protocol("MVBench", "restricted", "64", "", mvbench_match, "questions", "questions"),
}
BENCHES = tuple(PROTOCOLS)
