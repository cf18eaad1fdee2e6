"""The chat template a model gets when its tokenizer has none.

A model this project pretrained has no chat template (pretraining needs none), yet its
users fine-tune it on chat data and then chat with it, as TRL's ``setup_chat_format``
lets them do with any base model. Fine-tuning renders the conversations with this
template and publishes the tokenizer with it; the server renders prompts with it for a
tokenizer that still has none. One template for both, so what a model is asked when
served is what it learned from.

``role: content`` lines; each assistant turn ends with the end-of-sequence token, so
the model learns to stop; ``assistant:`` is the generation prompt. The render of a
conversation's prefix is a prefix of the whole render, which the fine-tuning loss mask
needs to tell the assistant turns apart. No tokens are added to the vocabulary.
"""

# The newlines are Jinja expressions: transformers renders templates with trim_blocks,
# which drops a newline written right after a block tag.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '\\n' }}{% endif %}assistant:{% endif %}"
)
