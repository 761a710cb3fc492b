"""A tokenizer folder as transformers 5 saves it: tokenizer.json and tokenizer_config.json only,
no vocab.json / merges.txt. Made from the SD 2.x fixture's tokenizer (real CLIP vocabulary, "!" as
its pad token), with transformers' ids for the same golden prompts, loaded back from that folder.

    source <reference env>/env.sh && python tools/reference/make_tokenizer_json_fixture.py

Writes test/fixtures/tokenizer-json-sd2/ and test/fixtures/goldens/tokenizer-json-sd2-tokens.json.
"""

import json
import os
import shutil

from transformers import CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
SOURCE = os.path.join(FIXTURES, "tiny-sd2", "tokenizer")
DEST = os.path.join(FIXTURES, "tokenizer-json-sd2")
GOLDEN = os.path.join(FIXTURES, "goldens", "tokenizer-json-sd2-tokens.json")


def main():
    shutil.rmtree(DEST, ignore_errors=True)
    CLIPTokenizer.from_pretrained(SOURCE).save_pretrained(DEST)
    files = sorted(os.listdir(DEST))
    assert files == ["tokenizer.json", "tokenizer_config.json"], files
    tokenizer = CLIPTokenizer.from_pretrained(DEST)
    with open(os.path.join(FIXTURES, "goldens", "tiny-sd2-tokens.json"), encoding="utf-8") as f:
        prompts = [p["prompt"] for p in json.load(f)["prompts"]]
    entries = []
    for prompt in prompts:
        padded = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        full = tokenizer(prompt, padding=False, truncation=False).input_ids
        entries.append({"prompt": prompt, "input_ids": padded, "untruncated_ids": full})
    golden = {
        "model_max_length": tokenizer.model_max_length,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "prompts": entries,
    }
    with open(GOLDEN, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {DEST} ({', '.join(files)}) and {GOLDEN}: {len(entries)} prompts")


if __name__ == "__main__":
    main()
