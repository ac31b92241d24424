"""Regenerate `sisc_vocab.txt`, the small lower-case BERT WordPiece vocabulary shipped with this repo.

    python tools/build_vocab.py            # writes <repo root>/sisc_vocab.txt
    python tools/build_vocab.py --check    # exits 1 if the committed file is out of date

Layout (deterministic; ids are line numbers):
  0-4   [PAD] [UNK] [CLS] [SEP] [MASK]
  then  single characters a-z, 0-9 and all ASCII punctuation,
  then  "##" + every a-z / 0-9 character, so that any lower-case ASCII word (the tokenizer lower-cases its
        input) is tokenized without [UNK], in the worst case one character at a time,
  then  common suffix pieces and whole words from the hand-written lists below (first occurrence wins).
"""

from __future__ import annotations

import argparse
import os
import string
import sys

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

SUFFIXES = "##s ##es ##ed ##ing ##ly ##er ##est ##ers ##en ##ion ##ions ##al ##ness ##ful ##less ##y ##ish".split()

COLOURS = "red green blue yellow purple orange white black gray grey pink brown cyan magenta colour color colours colors colored coloured dark light bright pale".split()

SHAPES = """
circle circles square squares triangle triangles star stars cross crosses diamond diamonds hexagon hexagons
pentagon pentagons rectangle rectangles ellipse ellipses heart hearts shape shapes object objects thing things
oval ovals dot dots line lines ring rings box boxes
""".split()

NUMBERS = """
zero one two three four five six seven eight nine ten eleven twelve single pair pairs several many no none
both each every few multiple only first second third number
""".split()

SIZES = "small smaller smallest large larger largest big bigger biggest tiny huge medium size sized little".split()

POSITIONS = """
left right top bottom above below next beside middle center centre corner corners upper lower near far
side sides between behind front under over inside outside around across along edge close away
""".split()

SCENE_WORDS = """
image images picture pictures photo photos photograph scene background foreground canvas with and of on in a an
the is are there some containing contains contain shows show showing shown has have having depicts depicting
drawn drawing filled outlined plain empty
""".split()

# Everyday English and frequent caption vocabulary (COCO-style), hand-picked.
COMMON_WORDS = """
to it that for as at by from or but not this these those be was were been being do does did done will would
can could should may might must shall up down out off into onto than then so if when where while what which
who whom whose why how all any most more less much very too also just now here again still even well back
about after before during through without within against among toward towards upon per via
i you he she we they me him her us them my your his its our their mine yours hers ours theirs myself itself
themselves someone something anything nothing everything other another same different such own
get got make made take took go goes going went come came see saw seen look looks looking looked sit sits
sitting sat stand stands standing stood walk walks walking ride rides riding play plays playing hold holds
holding held eat eats eating use using used put lay lying lies hang hanging fly flying flies run running
wear wearing wears carry carrying park parked cut cutting throw throwing catch catching swing swinging
wait waiting watch watching talk talking cook cooking fill covered cover surrounded placed set sets
man men woman women person people child children boy boys girl girls baby kid kids player players group
crowd family friend friends lady guy
dog dogs cat cats horse horses cow cows sheep bird birds elephant elephants bear bears zebra zebras giraffe
giraffes animal animals
car cars bus buses truck trucks train trains plane planes airplane boat boats bike bikes bicycle motorcycle
street road sidewalk city building buildings house home room kitchen bathroom bedroom table tables chair
chairs bed couch desk window windows door wall floor water sea ocean beach lake river field grass tree trees
sky cloud clouds snow mountain hill sun rain park tower clock sign signs light lights pole fence bench
food pizza sandwich cake plate plates bowl cup glass bottle fruit banana bananas apple apples vegetables
umbrella kite surfboard skateboard skis ball bat frisbee racket phone laptop computer tv screen book books
bag hat shirt dress jacket tie shoes
day night time year years way part place area view end group kind lot top
good new old young long short high low tall wide open closed full half whole real sure able clear round
flat thin thick heavy empty hot cold warm wet dry clean dirty busy beautiful nice pretty happy large
same similar other several
""".split()


def build_tokens() -> list[str]:
    """The vocabulary in id order, without duplicates."""
    chars = list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    continuation = ["##" + c for c in string.ascii_lowercase + string.digits]
    tokens: list[str] = []
    seen: set[str] = set()
    for token in SPECIAL_TOKENS + chars + continuation + SUFFIXES + COLOURS + SHAPES + NUMBERS + SIZES + POSITIONS + SCENE_WORDS + COMMON_WORDS:
        if token != token.strip() or not token:
            raise ValueError(f"bad token {token!r}")
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    assert tokens[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    return tokens


def main(argv: list[str] | None = None) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(root, "sisc_vocab.txt"))
    parser.add_argument("--check", action="store_true", help="only compare with the existing file")
    args = parser.parse_args(argv)
    text = "\n".join(build_tokens()) + "\n"
    if args.check:
        with open(args.output, encoding="utf-8") as f:
            current = f.read()
        if current != text:
            print(f"{args.output} is out of date; run tools/build_vocab.py", file=sys.stderr)
            return 1
        return 0
    with open(args.output, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {len(text.splitlines())} tokens to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
