"""Policy tokenizers with other chat templates than the reward model's, and the texts an RL loop would hand over."""

from transformers import AutoTokenizer

from discorm.data.templates import BUILTIN_TEMPLATES
from tests.conftest import CHATML

ZEPHYR = (  # a BOS, a default system prompt when there is none, the EOS closing every turn
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|system|>\nYou are a friendly assistant.</s>\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
POLICIES = {  # name -> (chat template, BOS, EOS, extra special tokens)
    "chatml": (CHATML, "<|endoftext|>", "<|im_end|>", []),
    "llama3": (BUILTIN_TEMPLATES["llama3"], "<|begin_of_text|>", "<|eot_id|>",
               ["<|start_header_id|>", "<|end_header_id|>"]),
    "zephyr": (ZEPHYR, "<s>", "</s>", ["<|system|>", "<|user|>", "<|assistant|>"]),
}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "The answer is 19."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the moon."},
     {"role": "assistant", "content": "The moon orbits the Earth."}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello, how are you?"},
     {"role": "user", "content": "thank you, and bees?"}, {"role": "assistant", "content": "Bees make honey.\n"}],
]


def policy_tokenizer(base_dir, name):
    template, bos, eos, extra = POLICIES[name]
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.add_special_tokens({"bos_token": bos, "eos_token": eos, "pad_token": "<|pad|>",
                                  "additional_special_tokens": extra})
    tokenizer.chat_template = template
    return tokenizer


def rollout(tokenizer, conversation, eos: bool = True, extra_bos: bool = False, pad: int = 0) -> str:
    """What an RL loop hands over: the prompt rendered with the generation prompt, the completion, maybe the
    policy's EOS and pad tokens after it and a second BOS before it (added by the tokenizer)."""
    prompt = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=False)
    text = prompt + conversation[-1]["content"] + (tokenizer.eos_token if eos else "") + tokenizer.pad_token * pad
    return (tokenizer.bos_token if extra_bos else "") + text
