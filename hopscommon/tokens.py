"""About how many tokens a text is, without the model's tokenizer (which is on the host).

Byte-level tokenizers (Llama 3's, Qwen's, Gemma's) take English prose and code at about four
characters a token, but text in other scripts at about a token a character (Chinese,
Japanese) or two (Cyrillic, Greek): its UTF-8 bytes are what they merge. So an ASCII character
counts one unit, another character one unit and a half per byte past its first (a
three-byte CJK character four units, a two-byte Cyrillic one two and a half), and a token is
UNITS_PER_TOKEN units. It errs long on the scripts between, which is the safe side: a prompt
taken as longer than it is goes to a host that holds it whole.
"""

from __future__ import annotations

UNITS_PER_TOKEN = 4
# What Ollama counts an image as when it fits a chat into the context length (chatPrompt's
# imageNumTokens: a CLIP image's embeddings); models differ (256 to over 1,000), none is zero.
IMAGE_TOKENS = 768


def text_units(text: str) -> int:
    """``text``'s size in units (see the module): its length, when it is ASCII."""
    if text.isascii():
        return len(text)
    return (3 * len(text.encode("utf-8", "surrogatepass")) - len(text)) // 2
