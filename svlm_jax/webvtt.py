"""WebVTT time stamps and cue text, shared by the stream CLI's subtitles and the server's transcripts."""
from __future__ import annotations


def vtt_time(t: float) -> str:
    """Seconds -> WebVTT time stamp HH:MM:SS.mmm (rounded to the millisecond)."""
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def cue_text(text: str) -> str:
    """Commentary as one cue payload line: whitespace (newlines included) folded to single spaces, since a
    blank line would end the cue, and &, <, > escaped as the format requires (so '-->' cannot appear)."""
    text = " ".join(text.split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
