"""Offline stand-ins for real-scale inputs: tiny Qwen2/Llama models with real tokenizers, local task data, punkt_tab.

Used by the tests and by `harness.bench.gpu_check`, which must run without network: a real byte-level BPE
tokenizer trained on a few lines, the architectures' real special tokens and chat templates, randomly initialised
2-layer models, and small copies of gsm8k, arc_easy and IFEval in their hub schemas. Nothing here touches the
network or the HF cache.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

# Qwen2.5-Instruct's chat template without the tool-calling branches (default system prompt kept).
QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Meta-Llama-3-8B-Instruct's chat template, verbatim.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Special tokens as in the real tokenizers; they are appended after the BPE vocabulary, as there.
SPECIALS = {
    "qwen2": dict(tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], pad="<|endoftext|>", eos="<|im_end|>",
                  bos=None, gen_eos=["<|im_end|>", "<|endoftext|>"], template=QWEN2_CHAT_TEMPLATE),
    "llama": dict(tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                          "<|eot_id|>", "<|finetune_right_pad_id|>"], pad="<|finetune_right_pad_id|>",
                  eos="<|eot_id|>", bos="<|begin_of_text|>", gen_eos=["<|end_of_text|>", "<|eot_id|>"],
                  template=LLAMA3_CHAT_TEMPLATE),
}
CORPUS = """Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.
How many clips did Natalia sell altogether in April and May? Answer: Natalia sold 48/2 = 24 clips in May.
Natalia sold 48+24 = 72 clips altogether in April and May. #### 72
The answer is 12. The total is 3 + 4 = 7, so the answer is 7 apples. Each box holds 6 eggs; 5 boxes hold 30 eggs.
Write a short poem about the sea. Your entire response should be in English, and in all lowercase letters.
Which of the following is a renewable resource? A. coal B. oil C. wind D. natural gas. The answer is C.
Plants need sunlight, water and air to grow. The sun is a star. Water freezes at 0 degrees Celsius.
She has 15 dollars and spends 7 dollars, so she has 15 - 7 = 8 dollars left. He runs 3 miles every day for 5 days.
Do not use any commas in your response. Highlight at least 2 sections with markdown, i.e. *highlighted section*.
"""


def build_tiny_model(folder: Path, arch: str = "qwen2", seed: int = 0, sizes: dict | None = None) -> Path:
    """A randomly initialised 2-layer Qwen2/Llama with a trained byte-level BPE tokenizer, saved to `folder`.

    `sizes` overrides the architecture's dimensions (hidden_size, num_hidden_layers, ...) for a random model of a real
    model's shape; such a model is saved in bf16 (speed figures only: its weights mean nothing).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, \
        Qwen2ForCausalLM

    spec = SPECIALS[arch]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS.splitlines(), trainers.BpeTrainer(
        vocab_size=600, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.add_special_tokens(spec["tokens"])
    if spec["bos"]:  # Llama 3 prepends <|begin_of_text|> on every encode (its template adds one as well)
        bos_id = tk.token_to_id(spec["bos"])
        tk.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A {spec['bos']} $B", special_tokens=[(spec["bos"], bos_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=spec["pad"], eos_token=spec["eos"],
                                  bos_token=spec["bos"], chat_template=spec["template"],
                                  model_max_length=1024, clean_up_tokenization_spaces=False)
    ids = {t: tok.convert_tokens_to_ids(t) for t in spec["tokens"]}
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  pad_token_id=ids[spec["pad"]], eos_token_id=ids[spec["eos"]]) | (sizes or {})
    if arch == "qwen2":
        config, cls = Qwen2Config(**common, tie_word_embeddings=True, bos_token_id=ids["<|endoftext|>"]), Qwen2ForCausalLM
    elif arch == "llama":
        config, cls = LlamaConfig(**common, tie_word_embeddings=False, bos_token_id=ids[spec["bos"]]), LlamaForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}; choose qwen2 or llama")
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[t] for t in spec["gen_eos"]], pad_token_id=ids[spec["pad"]],
        bos_token_id=config.bos_token_id, do_sample=False)
    if sizes:
        model = model.to(torch.bfloat16)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _gsm8k_rows(rnd: random.Random, n: int) -> list[dict]:
    names, items = ["Natalia", "Tom", "Maria", "Ken", "Ava"], ["clips", "apples", "stickers", "books", "eggs"]
    rows = []
    for _ in range(n):
        who, what, a, b = rnd.choice(names), rnd.choice(items), rnd.randint(2, 60), rnd.randint(2, 40)
        if rnd.random() < 0.5:
            q = f"{who} has {a} {what} and buys {b} more. How many {what} does {who} have now?"
            ans = f"{who} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {what}.\n#### {a + b}"
        else:
            q = f"{who} sells {b} {what} each day for {a} days. How many {what} does {who} sell in total?"
            ans = f"In {a} days {who} sells {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {what}.\n#### {a * b}"
        rows.append({"question": q, "answer": ans})
    return rows


def _arc_rows(rnd: random.Random, split: str, n: int) -> list[dict]:
    facts = [("Which of these is a renewable resource?", "wind", ["coal", "oil", "natural gas"]),
             ("What do plants need to make food?", "sunlight", ["sand", "plastic", "darkness"]),
             ("Which state of matter has a fixed shape?", "solid", ["liquid", "gas", "plasma"]),
             ("What is the closest star to Earth?", "the Sun", ["Sirius", "Polaris", "Vega"]),
             ("Which tool measures temperature?", "thermometer", ["ruler", "balance", "compass"])]
    rows = []
    for i in range(n):
        q, right, wrong = facts[i % len(facts)]
        texts = [right] + rnd.sample(wrong, 3)
        rnd.shuffle(texts)
        labels = list("1234") if i % 7 == 3 else list("ABCD")  # real ARC mixes letter and digit labels
        rows.append({"id": f"Mercury_{split}_{i:04d}", "question": q,
                     "choices": {"text": texts, "label": labels}, "answerKey": labels[texts.index(right)]})
    return rows


# Every IFEval kwargs record carries all argument keys (None where unused), as in the hub's parquet.
_IFEVAL_KEYS = ["num_highlights", "relation", "num_words", "num_placeholders", "prompt_to_repeat", "num_paragraphs",
                "nth_paragraph", "first_word", "keywords", "forbidden_words", "language", "num_bullets",
                "end_phrase", "section_spliter", "num_sections", "postscript_marker", "keyword", "frequency",
                "letter", "let_frequency", "let_relation", "capital_frequency", "capital_relation", "num_sentences"]
# (prompt, [(instruction_id, kwargs)]): checkers that run offline (langdetect ships its profiles; sentence
# counting needs punkt_tab, see write_punkt_tab).
_IFEVAL = [
    ("Write a short poem about the sea. Do not use any commas in your response.", [("punctuation:no_comma", {})]),
    ("Describe a cat. Your entire response should be in English, and in all lowercase letters.",
     [("change_case:english_lowercase", {})]),
    ("Write a story about a dog. Answer with at least 12 words.",
     [("length_constraints:number_words", {"relation": "at least", "num_words": 12})]),
    ("Explain rain in at least 2 sentences.", [("length_constraints:number_sentences",
                                              {"relation": "at least", "num_sentences": 2})]),
    ("Write a title for a song, wrapped in double angular brackets, such as <<poem of joy>>.",
     [("detectable_format:title", {})]),
    ("List three fruits. Include the keywords apple and pear.",
     [("keywords:existence", {"keywords": ["apple", "pear"]})]),
    ("Write a note to a friend. End your response with the exact phrase Is there anything else I can help with?",
     [("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"})]),
    ("Give two tips for sleep as exactly 2 markdown bullet points such as:\n* This is a point.",
     [("detectable_format:number_bullet_lists", {"num_bullets": 2})]),
    ("Wrap your entire response with double quotation marks. Say hello.", [("startend:quotation", {})]),
    ("Describe the moon. Do not include the words cheese or green.",
     [("keywords:forbidden_words", {"forbidden_words": ["cheese", "green"]})]),
    ("Write a short letter. At the end of your response, please explicitly add a postscript starting with P.S.",
     [("detectable_content:postscript", {"postscript_marker": "P.S."})]),
    ("Highlight at least 2 sections in your answer with markdown, i.e. *highlighted section*. Describe a tree.",
     [("detectable_format:number_highlighted_sections", {"num_highlights": 2})]),
    ("Describe bread. The word bread should appear at least 3 times. Do not use any commas.",
     [("keywords:frequency", {"keyword": "bread", "frequency": 3, "relation": "at least"}),
      ("punctuation:no_comma", {})]),
    ("Write about summer. Your ENTIRE response should be in English, and in all capital letters.",
     [("change_case:english_capital", {})]),
    ("Say why the sky is blue. Your response must be in English, no other language is allowed.",
     [("language:response_language", {"language": "en"})]),
]


def _ifeval_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        prompt, instructions = _IFEVAL[i % len(_IFEVAL)]
        prompt = prompt if i < len(_IFEVAL) else f"{prompt} Keep it brief (version {i // len(_IFEVAL)})."
        rows.append({"key": 1000 + i, "prompt": prompt, "instruction_id_list": [iid for iid, _ in instructions],
                     "kwargs": [{k: kw.get(k) for k in _IFEVAL_KEYS} for _, kw in instructions]})
    return rows


def write_task_data(folder: Path) -> dict[str, dict[str, str]]:
    """Small deterministic local copies of gsm8k, arc_easy and ifeval in their hub schemas: {task: {split: path}}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    return {
        "gsm8k": {"train": _write_jsonl(folder / "gsm8k_train.jsonl", _gsm8k_rows(rnd, 40)),
                  "test": _write_jsonl(folder / "gsm8k_test.jsonl", _gsm8k_rows(rnd, 20))},
        "arc_easy": {s: _write_jsonl(folder / f"arc_easy_{s}.jsonl", _arc_rows(rnd, s, n))
                     for s, n in (("train", 20), ("validation", 10), ("test", 12))},
        "ifeval": {"train": _write_jsonl(folder / "ifeval_train.jsonl", _ifeval_rows(30))},
    }


def write_punkt_tab(folder: Path) -> Path:
    """A minimal valid nltk punkt_tab model (a few abbreviations, otherwise untrained) under folder; returns folder."""
    english = Path(folder) / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True, exist_ok=True)
    # The four files nltk.tokenize.punkt.load_punkt_params reads; empty files are an untrained model.
    (english / "abbrev_types.txt").write_text("dr\nmr\nmrs\ne.g\ni.e\n")
    for name in ("collocations.tab", "sent_starters.txt", "ortho_context.tab"):
        (english / name).write_text("")
    return Path(folder)


def teach(folder: Path, prompts: list[str], responses: list[str], steps: int = 40, lr: float = 3e-3) -> Path:
    """Fine-tune the saved model in `folder` on (chat-rendered prompt, response + end token) pairs, in place.

    A random model almost never emits its end token, so none of its samples would count as finished: a few
    steps on short answers give the tiny base a habit to sample from, as pretraining gives a real one.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    seqs = []
    for p, r in zip(prompts, responses):
        ctx = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids_p = tok.encode(ctx, add_special_tokens=False)
        ids_r = tok.encode(r, add_special_tokens=False) + [tok.eos_token_id]
        seqs.append((ids_p, ids_r))
    T = max(len(a) + len(b) for a, b in seqs)
    ids = torch.full((len(seqs), T), tok.pad_token_id)
    labels = torch.full((len(seqs), T), -100)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (a, b) in enumerate(seqs):
        ids[i, :len(a) + len(b)] = torch.tensor(a + b)
        labels[i, len(a):len(a) + len(b)] = torch.tensor(b)
        attn[i, :len(a) + len(b)] = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        for _ in range(steps):
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
