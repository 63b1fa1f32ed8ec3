"""The built-in sample: synthetic conversations with every kind of row the job must handle.

`chatsieve sample --rows N --output DIR` writes N rows (non-blank JSONL lines, so the job's "rows
read" is exactly N) as `shard-00000.jsonl` ... `shard-0000S.jsonl.gz` (the last shard is gzip when
there are two or more, so that path is exercised too). No downloads: the README quickstart and the
end-to-end tests run on this.

What is in it (fractions of N, at least one of each planted kind; `write_sample` returns the counts):

| kind                     | share | what the row is                                       | default outcome         |
|--------------------------|-------|-------------------------------------------------------|-------------------------|
| clean                    | ~90%  | varied 1-3 exchange conversations, short answers      | kept                    |
| exact_duplicate          | 3%    | an earlier row again: verbatim, in another format, or | removed exact_duplicate |
|                          |       | with case / whitespace / NFKC-only changes            |                         |
| near_duplicate           | 3%    | an earlier row (>= 30 words) with one small edit: a   | removed near_duplicate  |
|                          |       | synonym, a typo, a punctuation mark, an added word    |                         |
| too_long                 | 0.1%  | an answer of 4,000-5,500 words (> 5,000 Mistral       | removed too_long        |
|                          |       | tokens, over the 4096 default)                        |                         |
| invalid_json             | 0.5%  | a truncated line, a Python repr, a trailing comma     | rejected invalid_json   |
| not_an_object            | 0.2%  | `[1, 2]`, `"text"`, `42`, `null`, a bare message list | rejected not_an_object  |
| unknown_format           | 0.2%  | an object with no conversation keys                   | rejected unknown_format |
| malformed_conversation   | 0.2%  | a message that is not an object; messages a string    | rejected (same code)    |
| unsupported_role         | 0.4%  | ShareGPT function_call/observation; OpenAI tool       | removed (same code)     |
| unsupported_content      | 0.3%  | an image_url or reasoning content part                | removed (same code)     |
| bad_role_order           | 0.3%  | a system message in the middle                        | removed (same code)     |
| no_assistant_turn        | 0.4%  | only a user turn                                      | removed (same code)     |
| empty_conversation       | 0.3%  | every message empty or whitespace                     | removed (same code)     |
| special_token_in_content | 0.3%  | literal `<s>`, `</s>` or `<unk>` in a message         | removed (same code)     |
| negative_label           | 0.3%  | KTO row with `"label": false`                         | removed (same code)     |
| preference_pair          | 0.5%  | ShareGPT `conversations` + `chosen` / `rejected`      | kept as prompt + chosen |
| hh_transcript            | 0.5%  | Anthropic HH `chosen` / `rejected` transcripts        | kept as chosen          |

Plus about one blank line per 500 rows (skipped by the reader, not rows). Clean rows are ShareGPT,
OpenAI messages (some with typed text parts, some with `"label": true`) and Alpaca (with and without
`input`); each shard favours a different format, and shards alternate ASCII-escaped / raw UTF-8 and
spaced / compact JSON, so the reader sees all of them.

Why it looks like this:
- Diversity: a row is a domain (30 of them, 12 topic nouns and 6 verbs each) plus conversation-level
  slots (names, places, relations) and 2-4 sentences drawn from ~45 answer templates whose numbers,
  adjectives, connectors and reasons are re-drawn per sentence. Unrelated rows share no more than
  template glue, so their MiniLM cosine stays far below the 0.95 near-duplicate threshold and the
  job's kept count is close to the planted counts; a handful of fixed templates would not be.
- Duplicates copy a base from a bounded uniform reservoir of earlier clean rows (algorithm R), so
  memory stays flat for any N and most copies land in a later shard than their base. Bases precede
  their copies in (source, source_row) order, so `--keep first` keeps the base.
- Near-duplicates edit one word or mark of a >= 30-word conversation: small enough that a sentence
  embedder scores them >= 0.95 with the base, large enough that exact dedup does not catch them.
- Short answers (tens of tokens) keep CPU embedding of the quickstart fast; the over-long rows are
  few because each is ~35 kB.
- Deterministic: one `random.Random(seed)` draws every value in row order and a numpy Generator
  with the same seed places the planted kinds; gzip headers carry no name or time. Same config,
  byte-identical files.
- Speed: pure string templates and `json.dumps`, written in chunks. Measured: 1M rows (480 MB) in
  29 s of CPU, 47 s wall on a busy 2-core machine, 160 MB peak RSS.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from operators import schema

logger = logging.getLogger(__name__)

# --- planted kinds ---------------------------------------------------------------------------------
CLEAN = "clean"
HH_TRANSCRIPT = "hh_transcript"
# Names follow the reason code each kind should produce, where there is one.
PLANTED_FRACTIONS = (
    (schema.EXACT_DUPLICATE, 0.03),
    (schema.NEAR_DUPLICATE, 0.03),
    (schema.TOO_LONG, 0.001),
    (schema.INVALID_JSON, 0.005),
    (schema.NOT_AN_OBJECT, 0.002),
    (schema.UNKNOWN_FORMAT, 0.002),
    (schema.MALFORMED_CONVERSATION, 0.002),
    (schema.UNSUPPORTED_ROLE, 0.004),
    (schema.UNSUPPORTED_CONTENT, 0.003),
    (schema.BAD_ROLE_ORDER, 0.003),
    (schema.NO_ASSISTANT_TURN, 0.004),
    (schema.EMPTY_CONVERSATION, 0.003),
    (schema.SPECIAL_TOKEN_IN_CONTENT, 0.003),
    (schema.NEGATIVE_LABEL, 0.003),
    (schema.PREFERENCE_PAIR, 0.005),
    (HH_TRANSCRIPT, 0.005),
)
KINDS = (CLEAN,) + tuple(kind for kind, _ in PLANTED_FRACTIONS)

# What the job does with each kind under the default config: (status, reason). Duplicates depend on
# the dedup stages (the near-duplicate one on the embedder and --threshold); preference rows are
# removed as preference_pair with --preference skip.
EXPECTED_OUTCOME = {
    CLEAN: (schema.KEPT, None),
    schema.PREFERENCE_PAIR: (schema.KEPT, None),
    HH_TRANSCRIPT: (schema.KEPT, None),
    **{
        kind: (schema.REMOVED, kind)
        for kind in (
            schema.EXACT_DUPLICATE,
            schema.NEAR_DUPLICATE,
            schema.TOO_LONG,
            schema.UNSUPPORTED_ROLE,
            schema.UNSUPPORTED_CONTENT,
            schema.BAD_ROLE_ORDER,
            schema.NO_ASSISTANT_TURN,
            schema.EMPTY_CONVERSATION,
            schema.SPECIAL_TOKEN_IN_CONTENT,
            schema.NEGATIVE_LABEL,
        )
    },
    **{
        kind: (schema.REJECTED, kind)
        for kind in (
            schema.INVALID_JSON,
            schema.NOT_AN_OBJECT,
            schema.UNKNOWN_FORMAT,
            schema.MALFORMED_CONVERSATION,
        )
    },
}

# Every planted kind needs at least one row, and duplicates need earlier clean rows to copy.
MIN_ROWS = 100
RESERVOIR_SIZE = 1000  # bases for duplicates: bounded memory for any N
NEAR_DUPLICATE_MIN_WORDS = 30  # one edit in >= 30 words keeps a sentence embedder's cosine >= 0.95
BLANK_LINE_EVERY = 500
_CHUNK_LINES = 8192  # lines joined per write: fewer syscalls, bounded memory

FORMATS = ("sharegpt", "openai", "openai_parts", "alpaca")
_SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


@dataclass(frozen=True)
class SampleConfig:
    rows: int = 2000
    shards: int = 4
    seed: int = 0

    def __post_init__(self):
        for name in ("rows", "shards", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"--{name} must be an integer, got {value!r}")
        if self.rows < MIN_ROWS:
            raise ValueError(f"--rows must be at least {MIN_ROWS} so every planted kind fits; got {self.rows}")
        if not 1 <= self.shards <= self.rows // 10:
            raise ValueError(f"--shards must be between 1 and rows/10 ({self.rows // 10}); got {self.shards}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")


# --- vocabulary --------------------------------------------------------------------------------------
# (domain, topic nouns, verbs as base|gerund). Conversations stay on one domain, as real ones do.
_DOMAINS_SPEC = (
    ("cooking", "sourdough starter;cast-iron skillet;mushroom risotto;pie crust;chickpea curry;chicken stock;"
     "miso glaze;pizza dough;vinaigrette;lentil soup;banana bread;chef's knife",
     "bake|baking;simmer|simmering;season|seasoning;braise|braising;knead|kneading;caramelize|caramelizing"),
    ("gardening", "tomato seedlings;compost pile;raised bed;rose bushes;basil plants;clay soil;drip irrigation;"
     "apple tree;lawn;potting mix;pepper plants;hydrangeas",
     "prune|pruning;water|watering;transplant|transplanting;mulch|mulching;fertilize|fertilizing;repot|repotting"),
    ("astronomy", "telescope;moons of Jupiter;meteor shower;Andromeda galaxy;star chart;lunar eclipse;"
     "rings of Saturn;Orion nebula;binoculars;light pollution;red dwarf;comet",
     "observe|observing;photograph|photographing;track|tracking;locate|locating;align|aligning;sketch|sketching"),
    ("personal finance", "emergency fund;credit card debt;index fund;monthly budget;retirement account;mortgage;"
     "savings goal;student loan;tax return;grocery bill;car insurance;side income",
     "pay off|paying off;track|tracking;invest in|investing in;refinance|refinancing;cut|cutting;plan|planning"),
    ("Python programming", "list comprehension;virtual environment;unit tests;dictionary;recursive function;"
     "decorator;pandas dataframe;async event loop;type hints;CSV parser;logging setup;regular expression",
     "debug|debugging;refactor|refactoring;test|testing;profile|profiling;write|writing;document|documenting"),
    ("fitness", "squat form;running shoes;interval training;rest days;pull-up routine;protein intake;"
     "hamstring stretch;kettlebell swing;marathon plan;heart rate zone;plank;rowing machine",
     "improve|improving;train for|training for;warm up for|warming up for;schedule|scheduling;"
     "recover from|recovering from;measure|measuring"),
    ("travel", "rail pass;carry-on bag;travel insurance;hostel booking;jet lag;visa application;road trip;"
     "night bus;walking tour;city map;rental car;layover",
     "plan|planning;book|booking;pack|packing;budget for|budgeting for;avoid|avoiding;navigate|navigating"),
    ("home repair", "leaky faucet;drywall patch;squeaky door;circuit breaker;clogged drain;window seal;deck stain;"
     "tile grout;ceiling fan;water heater;fence post;rain gutter",
     "fix|fixing;replace|replacing;seal|sealing;inspect|inspecting;install|installing;paint|painting"),
    ("music", "guitar chords;piano scales;drum groove;vocal warm-up;chord progression;metronome;ukulele strings;"
     "sheet music;bass line;home recording;jazz standard;violin bow",
     "practice|practicing;tune|tuning;memorize|memorizing;record|recording;transpose|transposing;"
     "compose|composing"),
    ("history", "Roman aqueducts;printing press;Silk Road;Industrial Revolution;Hanseatic League;Ottoman navy;"
     "medieval guilds;Bronze Age collapse;Meiji reforms;Byzantine coinage;Viking longships;Maya calendar",
     "study|studying;research|researching;compare|comparing;summarize|summarizing;teach|teaching;date|dating"),
    ("photography", "shutter speed;prime lens;golden hour;tripod;RAW files;depth of field;night sky shots;"
     "portrait lighting;white balance;street photos;film camera;lens filter",
     "shoot|shooting;edit|editing;frame|framing;expose|exposing;focus on|focusing on;light|lighting"),
    ("pets", "puppy;senior cat;aquarium;parrot;litter box;dog leash;rabbit hutch;hamster cage;flea treatment;"
     "cat food;goldfish;dog crate",
     "train|training;feed|feeding;groom|grooming;clean|cleaning;introduce|introducing;exercise|exercising"),
    ("language learning", "Spanish verbs;Japanese kana;French pronunciation;German cases;flashcards;"
     "Mandarin tones;Italian phrases;grammar drills;listening practice;Korean vocabulary;Portuguese accent;"
     "language exchange",
     "learn|learning;review|reviewing;pronounce|pronouncing;memorize|memorizing;practice|practicing;"
     "drill|drilling"),
    ("writing", "cover letter;short story;blog post;thesis statement;opening paragraph;product description;"
     "wedding speech;poem;newsletter;grant proposal;book review;dialogue scene",
     "draft|drafting;edit|editing;shorten|shortening;outline|outlining;polish|polishing;revise|revising"),
    ("cycling", "bike chain;road bike;tire pressure;disc brakes;saddle height;commute route;gear shifting;"
     "bike lights;helmet;century ride;derailleur;bike lock",
     "adjust|adjusting;lubricate|lubricating;repair|repairing;ride|riding;upgrade|upgrading;clean|cleaning"),
    ("chemistry", "titration;buffer solution;periodic table;molar mass;redox reaction;lab notebook;pH meter;"
     "organic synthesis;distillation;covalent bonds;catalyst;reaction rate",
     "calculate|calculating;balance|balancing;measure|measuring;explain|explaining;prepare|preparing;"
     "dilute|diluting"),
    ("web development", "CSS grid;REST API;login form;React component;database index;CORS error;"
     "responsive layout;HTML table;cookie banner;web server;page load time;JSON response",
     "build|building;debug|debugging;deploy|deploying;style|styling;optimize|optimizing;secure|securing"),
    ("parenting", "bedtime routine;toddler tantrums;school lunches;screen time;homework schedule;potty training;"
     "weekly allowance;sibling rivalry;reading habit;car seat;birthday party;summer camp",
     "manage|managing;plan|planning;handle|handling;set up|setting up;encourage|encouraging;"
     "talk about|talking about"),
    ("weather and climate", "heat wave;rain gauge;hurricane season;frost dates;humidity;cloud types;"
     "weather station;drought;snowfall;air quality;solar panels;heat pump",
     "forecast|forecasting;measure|measuring;prepare for|preparing for;monitor|monitoring;explain|explaining;"
     "reduce|reducing"),
    ("careers", "job interview;salary negotiation;resume;performance review;career change;remote work;mentor;"
     "portfolio;networking event;promotion;LinkedIn profile;team meeting",
     "prepare for|preparing for;negotiate|negotiating;update|updating;ask for|asking for;lead|leading;"
     "improve|improving"),
    ("mathematics", "prime numbers;quadratic equation;probability puzzle;matrix multiplication;derivative;"
     "geometric series;Pythagorean theorem;standard deviation;modular arithmetic;integral;vector space;"
     "graph coloring",
     "solve|solving;prove|proving;calculate|calculating;visualize|visualizing;simplify|simplifying;"
     "estimate|estimating"),
    ("board games", "chess opening;Catan strategy;Go endgame;poker odds;crossword clue;Scrabble rack;"
     "Monopoly rules;bridge bidding;backgammon race;sudoku grid;Carcassonne tiles;dice game",
     "play|playing;win at|winning at;learn|learning;teach|teaching;analyze|analyzing;host|hosting"),
    ("coffee and tea", "espresso shot;pour-over;cold brew;green tea;milk frother;French press;burr grinder;"
     "matcha;masala chai;oolong;coffee beans;gooseneck kettle",
     "brew|brewing;grind|grinding;steep|steeping;roast|roasting;store|storing;descale|descaling"),
    ("sleep and health", "sleep schedule;afternoon nap;caffeine habit;blood pressure;lower back pain;posture;"
     "hydration;vitamin D;seasonal allergies;meditation;dentist visit;eye strain",
     "improve|improving;track|tracking;reduce|reducing;manage|managing;check|checking;avoid|avoiding"),
    ("cars", "oil change;brake pads;car battery;tire rotation;check engine light;windshield wipers;"
     "fuel economy;used car;electric car;parallel parking;winter tires;dashcam",
     "maintain|maintaining;replace|replacing;check|checking;buy|buying;charge|charging;diagnose|diagnosing"),
    ("drawing and painting", "watercolor wash;charcoal sketch;color wheel;perspective drawing;acrylic paint;"
     "figure drawing;linocut print;sketchbook;oil pastels;digital brushes;still life;portrait proportions",
     "draw|drawing;shade|shading;blend|blending;mix|mixing;paint|painting;sketch|sketching"),
    ("data science", "linear regression;confusion matrix;feature scaling;time series;random forest;SQL query;"
     "outlier detection;A/B test;train-test split;histogram;correlation matrix;clustering model",
     "fit|fitting;evaluate|evaluating;clean|cleaning;visualize|visualizing;interpret|interpreting;"
     "sample|sampling"),
    ("event planning", "wedding budget;guest list;conference agenda;catering menu;venue booking;team offsite;"
     "charity gala;seating chart;invitation cards;live band;photo booth;volunteer roster",
     "organize|organizing;plan|planning;book|booking;budget for|budgeting for;coordinate|coordinating;"
     "schedule|scheduling"),
    ("hiking and camping", "trail map;tent;sleeping bag;water filter;hiking boots;campfire;bear canister;"
     "first aid kit;headlamp;switchbacks;alpine lake;backpack",
     "pack|packing;set up|setting up;choose|choosing;carry|carrying;navigate|navigating;clean|cleaning"),
    ("Linux administration", "bash script;cron job;file permissions;SSH keys;disk usage;systemd service;"
     "grep command;tar archive;environment variables;package manager;log rotation;firewall rules",
     "configure|configuring;automate|automating;debug|debugging;secure|securing;check|checking;"
     "schedule|scheduling"),
)  # fmt: skip
_DOMAINS = tuple(
    (name, tuple(nouns.split(";")), tuple(tuple(v.split("|")) for v in verbs.split(";")))
    for name, nouns, verbs in _DOMAINS_SPEC
)

# A few non-ASCII names and places, so raw UTF-8 and \\u escapes both occur and NFKC matters.
_NAMES = tuple(
    "Amara Ben Chloé Dmitri Elena Farid Grace Hiro Ines José Kai Lena Malik Nora Omar Priya Quinn Rosa Sven "
    "Tariq Uma Victor Wen Ximena Yusuf Zoë Aisha Björn Carmen Diego Emeka Fatima Gus Hana Ivan Jonas Keiko "
    "Leila Mateo Nadia Oskar Paula Rafael Sofia Theo Renée Wei Yara Ana Bruno".split()
)
_PLACES = tuple(
    "Lisbon;Nairobi;Osaka;Denver;Zürich;São Paulo;Kraków;Montréal;Reykjavík;Malmö;Bogotá;Düsseldorf;"
    "Manila;Toronto;Austin;Glasgow;Hanoi;Cape Town;Melbourne;Seoul;Lagos;Chicago;Vienna;Lima;Dublin;"
    "Mumbai;Athens;Tallinn;Porto;Auckland;Boise;Marseille;Leeds;Busan;Quito;Accra;Helsinki;Perth;Seville;"
    "Tucson;Bergen;Nagoya;Kigali;Valencia;Halifax;Cork;Utrecht;Ghent;Bristol;Calgary".split(";")
)
_RELATIONS = tuple(
    "sister;brother;boss;neighbor;roommate;dad;mom;coworker;friend;partner;grandmother;teacher;son;"
    "daughter;uncle;landlord;coach;manager".split(";")
)
_ADJECTIVES = tuple(
    "simple reliable sturdy cheap consistent quiet solid flexible modest clean careful realistic balanced "
    "steady practical gentle basic good sensible lightweight durable efficient fresh safe thorough".split()
)
_ADVERBS = tuple(
    "slowly gently carefully patiently steadily deliberately early regularly lightly thoroughly quickly "
    "consistently".split()
)
_CONNECTORS = tuple(
    "First;Also;In practice;On the other hand;Honestly;As a rule of thumb;Second;Finally;Above all;"
    "For what it's worth;Meanwhile;In my experience;To be safe;More importantly;Either way;Realistically".split(";")
)
_REASONS = tuple(
    "it saves time later;small mistakes add up quickly;the results are easier to compare;"
    "it is much harder to undo later;most problems start there;it builds a habit;"
    "you learn faster from small steps;the rest depends on it;it keeps costs predictable;"
    "you can spot problems early;it is the cheapest fix;the effect compounds over weeks;"
    "nobody gets it right the first time;rushing is the usual cause of trouble".split(";")
)
_PROBLEMS = tuple(
    "falling apart;getting worse;taking too long;costing more than expected;acting up;going wrong;"
    "drifting;wearing out;stalling;feeling inconsistent;breaking down;coming out uneven".split(";")
)
_PROBLEM_NOUNS = ("trouble", "frustration", "waste", "confusion", "extra cost", "delay")
_UNITS = tuple("minutes hours days weeks sessions grams liters kilometers pages steps tries rounds".split())
_MONTHS = tuple("January February March April May June July August September October November December".split())
_WEEKDAYS = tuple("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split())
_SMALL = ("two", "three", "four", "five")
_NUMS = tuple(str(n) for n in range(2, 301))
_NUMS2 = tuple(str(n) for n in range(2, 61))
_YEARS = tuple(str(y) for y in range(1890, 2025))
_PRICES = tuple(f"${p}" for p in range(5, 2000, 5)) + tuple(f"€{p}" for p in range(5, 800, 5))
_PCTS = tuple(f"{p}%" for p in range(3, 96))

_SYSTEM_T = (
    "You are a helpful assistant who knows a lot about {domain}.",
    "You are a concise {domain} tutor. Keep answers brief.",
    "Answer as a friendly expert in {domain}.",
    "You are a patient coach. Use plain language and short paragraphs.",
    "You help people with {domain} questions. Be practical and specific.",
    "Reply in a warm, encouraging tone. The user is {name} from {place}.",
    "You are an assistant for a {domain} club. Avoid jargon.",
)
_QUESTION_T = (
    "How do I {verb} the {noun} without messing up the {noun2}?",
    "My {noun} keeps {problem} after about {num2} {unit}. What am I doing wrong?",
    "Can you explain the difference between {noun} and {noun2} to a complete beginner?",
    "I'm planning to {verb} my {noun} in {place} next {month}. Any advice?",
    "What's a sensible way to {verb} the {noun} on a budget of {price}?",
    "Why does everyone say the {noun} matters so much when {verbing} the {noun2}?",
    "Give me {small} quick tips for {verbing} the {noun}.",
    "Is it true that you should never {verb} the {noun} before the {noun2} is ready?",
    "My {relation} asked me how to {verb} the {noun}. How would you explain it simply?",
    "What changed about {verbing} the {noun} since {year}?",
    "How long should {verbing} the {noun} take if I only have {num2} {unit} a week?",
    "I tried {verbing} the {noun} yesterday and it went badly. Where do I start?",
    "Which matters more in {domain}: the {noun} or the {noun2}?",
    "Could you outline a {adj} plan for {verbing} the {noun} over the next {small} weeks?",
    "What tools do I actually need for {verbing} the {noun}?",
    "Is {verbing} the {noun} worth it for someone living in {place}?",
    "What are the most common mistakes people make with the {noun}?",
    "{name} told me the {noun} is overrated. Is that fair?",
    "Explain the {noun} like I'm twelve, please.",
    "I have {num} {unit} and a {adj} {noun2}. How should I {verb} the {noun}?",
    "What's the first thing to check when the {noun} starts {problem}?",
    "Can you compare {verbing} the {noun} by hand versus with the {noun2}?",
    "How do professionals {verb} the {noun} differently from hobbyists?",
    "Before {weekday} I need to {verb} the {noun}. What should I prioritize?",
    "What does a {adj} {noun} look like, and how do I get there?",
    "Could you suggest a routine for {verbing} the {noun} that fits around a full-time job?",
    "Why is my {noun2} affecting the {noun} so much?",
    "Is there a safe way to {verb} the {noun} if I'm short on time?",
    "What would you tell a friend in {place} who wants to start {verbing} the {noun}?",
    "How can I tell if my {noun} is good enough, or whether I should {verb} it again?",
)
_QUESTION_PREFIX = ("", "", "", "", "Hi! ", "Hello. ", "Quick question. ", "Thanks in advance. ",
                    "I'm new to {domain}. ", "I've been stuck on this for {num2} days. ")  # fmt: skip
_QUESTION_SUFFIX = ("", "", "", "", " Thanks!", " Please keep it short.", " I'm a beginner.",
                    " Be honest.", " Examples welcome.", " I live in {place}, if that matters.")  # fmt: skip
_FOLLOWUP_T = (
    "Thanks. And what about the {noun2}?",
    "Could you make that shorter?",
    "What if I only have {num2} {unit}?",
    "Does that change if I live in {place}?",
    "How would I know it's working?",
    "And if the {noun} still keeps {problem}?",
    "Can you turn that into a checklist?",
    "Is {price} a reasonable amount to spend on this?",
    "What would you do differently as an expert?",
    "My {relation} disagrees. How do I convince them?",
    "Which step is most important?",
    "Okay, and how often should I {verb} it?",
    "Got it. Anything I should avoid with the {noun3}?",
    "What's a good next step after that?",
    "Would it be different back in {year}?",
)
_OPENERS = ("", "", "", "Sure.", "Good question.", "Happy to help.", "Here is what usually works.",
            "Short answer: it depends, but here is a start.", "Sure! 🙂", "Absolutely.",
            "Let me break it down.", "Here's a practical take.", "Great that you are trying this.")  # fmt: skip
_CLOSERS = ("", "", "", "", "Good luck with the {noun}!", "Let me know how it goes.", "Hope that helps.",
            "Feel free to ask a follow-up.", "You've got this, {name}.", "Enjoy the process.")  # fmt: skip
_ANSWER_T = (
    "Start by {verbing} the {noun} {adv}, because {reason}.",
    "Most people find that {num2} {unit} is enough for the {noun}.",
    "{connector}, keep the {noun2} {adj} so it does not start {problem}.",
    "If you live in {place}, a local shop will often have a {adj} {noun2}.",
    "A common mistake is to {verb} the {noun} before the {noun2} is ready.",
    "Try {verbing} the {noun} for about {num2} {unit}, then check it again.",
    "{name} likes to say that a {adj} {noun} beats a perfect plan, and that holds here.",
    "Since {year}, the usual advice about the {noun} has shifted toward {adj} methods.",
    "Budget roughly {price} if you want a {adj} {noun2}, but you can start with less.",
    "{connector}, write down what you changed each time so you can compare results.",
    "The {noun2} matters less than consistency, so {verb} the {noun} on a fixed schedule.",
    "If the {noun} keeps {problem}, go back one step and {verb} it {adv}.",
    "About {pct} of beginners skip this step, and it usually shows in the {noun}.",
    "Ask your {relation} to watch you {verb} the {noun} once; a second pair of eyes helps.",
    "{connector}, do not {verb} the {noun} and the {noun2} at the same time.",
    "Set aside {num2} {unit} every {weekday} and treat it as a fixed appointment.",
    "A {adj} {noun2} makes {verbing} the {noun} noticeably easier.",
    "Check the {noun} after {num} {unit}; if it looks {adj}, you are on track.",
    "Think of the {noun} as the foundation and the {noun2} as the finishing touch.",
    "In {place}, people often {verb} the {noun} in {month}, when conditions are {adj}.",
    "{connector}, {reason}, so patience pays off.",
    "Avoid cheap shortcuts with the {noun2}; they tend to cost more within {small} months.",
    "You can {verb} the {noun} {adv} with just the {noun2} and a little practice.",
    "Track one number, such as {unit} per session, and aim to improve it by {pct}.",
    "If you only remember one thing, {verb} the {noun} before you touch the {noun2}.",
    "Experts usually {verb} the {noun} {adv}, which is why their results look {adj}.",
    "There is no single right answer, but a {adj} approach to the {noun} rarely fails.",
    "When in doubt, compare your {noun} with a reference photo from {year}.",
    "Expect the first {small} attempts at {verbing} the {noun} to feel awkward.",
    "{name} from {place} solved the same problem by {verbing} the {noun2} first.",
    "It also helps to read the manual for your {noun2}, which often lists {adj} settings.",
    "Leave at least {num2} {unit} between sessions so you can see what actually changed.",
    "A {adj} {noun} usually lasts {num} {unit} longer than one handled in a hurry.",
    "{connector}, the {noun2} is where most of the {problem_noun} comes from.",
    "Keep a {adj} checklist next to the {noun3} and tick off each step.",
    "If money is tight, skip the {noun3} for now and focus on the {noun}.",
    "Good results with the {noun} usually come from {verbing} it {adv}, not from expensive gear.",
    "Once the {noun} feels {adj}, move on to the {noun2}.",
    "Around {num} {unit} in, most people notice the {noun} getting easier.",
    "Don't worry if the {noun3} looks odd at first; it often settles after {num2} {unit}.",
    "A quick way to test it is to {verb} a small part of the {noun} and compare.",
    "{connector}, ask someone in a {domain} group in {place}; locals know the details.",
    "It is fine to pause for a {weekday} or two, as long as you come back to the {noun}.",
    "The cheapest upgrade is usually a {adj} {noun3}, often under {price}.",
    "Write the date, the {unit}, and one note each time you {verb} the {noun}.",
)
_LONG_REQUEST_T = (
    "Write a detailed, step-by-step guide to {verbing} the {noun}, covering every common mistake.",
    "Please write a very long handbook chapter about the {noun} for people in {place}.",
    "I need an exhaustive reference on {verbing} the {noun} and the {noun2}. Be as complete as you can.",
)
_SPECIAL_TOKEN_SENTENCES = (
    "In HTML, wrap the old price in <s>{price}</s> so it shows as struck through.",
    "The tokenizer printed <unk> where the word {noun} should have been.",
    "My model keeps writing </s> in the middle of answers about the {noun}.",
    "Some templates start every example with <s> before the first instruction.",
)
_REJECTED_ANSWERS = ("I don't know.", "Just search online.", "That is not something I can help with.",
                     "It depends.", "Why would you want to do that?", "No idea, sorry.")  # fmt: skip
_ALPACA_INSTRUCTIONS = ("Answer the question below.", "Respond to the following message.",
                        "Give helpful advice for this request.", "Reply briefly to the user.",
                        "Answer the following question.")  # fmt: skip

# Near-duplicate edits: synonyms that keep the sentence's meaning (and so its embedding).
_SYNONYMS = {
    "start": "begin", "begin": "start", "usually": "typically", "typically": "usually",
    "often": "frequently", "quick": "fast", "simple": "easy", "cheap": "inexpensive",
    "check": "verify", "roughly": "approximately", "about": "around", "around": "about",
    "mistake": "error", "common": "frequent", "helps": "assists", "enough": "sufficient",
    "easier": "simpler", "noticeably": "clearly", "expensive": "costly", "awkward": "clumsy",
    "odd": "strange", "tight": "limited", "fine": "okay", "actually": "really",
    "compare": "contrast", "quickly": "rapidly", "gently": "softly", "good": "great",
    "sensible": "reasonable", "people": "folks", "most": "many",
}  # fmt: skip
# How an exact duplicate differs from its base: not at all, in format, or only in what the
# exact-dedup key (NFKC, casefold, whitespace collapsed) erases.
_EXACT_VARIANTS = ("format", "whitespace", "verbatim", "case", "format", "nfkc")
_FILLERS = ("really", "just", "actually", "simply", "also")

_FORMATTER = string.Formatter()
# Slots re-drawn for every sentence; the rest (topic, people, places) hold for a whole conversation.
_FRESH = {
    "adj": _ADJECTIVES, "adv": _ADVERBS, "connector": _CONNECTORS, "reason": _REASONS,
    "problem": _PROBLEMS, "problem_noun": _PROBLEM_NOUNS, "unit": _UNITS, "month": _MONTHS,
    "weekday": _WEEKDAYS, "small": _SMALL, "num": _NUMS, "num2": _NUMS2, "year": _YEARS,
    "price": _PRICES, "pct": _PCTS,
}  # fmt: skip
_CONVERSATION_SLOTS = {"domain", "noun", "noun2", "noun3", "verb", "verbing", "place", "name", "relation"}


def _compile(templates: tuple[str, ...]) -> tuple:
    """Pair each template with its per-sentence slots, checking every slot name once at import."""
    compiled = []
    for template in templates:
        fields = {name for _, name, _, _ in _FORMATTER.parse(template) if name}
        unknown = fields - _FRESH.keys() - _CONVERSATION_SLOTS
        if unknown:
            raise AssertionError(f"template {template!r} uses unknown slots {sorted(unknown)}")
        compiled.append((template, tuple((name, _FRESH[name]) for name in sorted(fields & _FRESH.keys()))))
    return tuple(compiled)


# Typos: one misspelling per template glue word. MiniLM is touchy about typos: a random letter swap
# moved 4% of near-duplicates below 0.95 (in topic words: "skillet" -> "sikllet" 0.955,
# "cheapest" -> "cheaepst" 0.85). These forms were kept because, measured in generated rows, each
# left the cosine with the original row >= 0.99.
_TYPOS = dict(
    pair.split(">")
    for pair in (
        "cheapest>cheapst handled>handeld longer>longr patience>patence single>signle finishing>finishig "
        "usually>usualy notice>notce within>withn noticeably>noticebly actually>actualy compare>comare "
        "reasonable>reasonble advice>adice practical>prctical different>differnt expect>exect planning>planing "
        "whether>whethr everyone>eveyone checklist>checkilst someone>someoe second>seond settles>setles "
        "messing>messng matters>maters little>litte beginners>beginers locals>locas reference>referece "
        "foundation>fuondation getting>geting because>becaue solved>soved roughly>rughly expensive>expensve "
        "anything>anyting remember>remmber toward>towrd attempts>attepts approach>appraoch enough>enugh "
        "perfect>perect results>reults sensible>senisble difference>differece people>poeple common>comon "
        "affecting>affectng manual>manaul conditions>condtiions mistake>misake trying>tryng should>shoud "
        "between>betwen around>aroud"
    ).split()
)

_C_SYSTEM, _C_QUESTION, _C_FOLLOWUP, _C_ANSWER, _C_LONG, _C_SPECIAL = map(
    _compile, (_SYSTEM_T, _QUESTION_T, _FOLLOWUP_T, _ANSWER_T, _LONG_REQUEST_T, _SPECIAL_TOKEN_SENTENCES)
)
_C_PREFIX, _C_SUFFIX, _C_OPENER, _C_CLOSER = map(_compile, (_QUESTION_PREFIX, _QUESTION_SUFFIX, _OPENERS, _CLOSERS))


# --- row generation ----------------------------------------------------------------------------------


class _Generator:
    """Draws rows in order from one seeded stream. Conversations are tuples of (role, content)."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)
        self._random = self._rng.random
        self._reservoir: list[tuple[str, object]] = []  # (format, payload) of earlier clean rows
        self._reservoir_seen = 0
        self._near_duplicates: set = set()  # payloads already emitted as near-duplicates
        self._exact_duplicates = 0

    def _pick(self, seq):
        return seq[int(self._random() * len(seq))]

    # -- text --

    def _context(self) -> dict:
        name, nouns, verbs = self._pick(_DOMAINS)
        i, j, k = self._rng.sample(range(len(nouns)), 3)
        verb, verbing = self._pick(verbs)
        return {
            "domain": name, "noun": nouns[i], "noun2": nouns[j], "noun3": nouns[k], "verb": verb,
            "verbing": verbing, "place": self._pick(_PLACES), "name": self._pick(_NAMES),
            "relation": self._pick(_RELATIONS),
        }  # fmt: skip

    def _fill(self, compiled, ctx: dict) -> str:
        template, fresh = self._pick(compiled)
        if fresh:
            ctx = dict(ctx)
            for name, values in fresh:
                ctx[name] = values[int(self._random() * len(values))]
        return template.format_map(ctx)

    def _sentences(self, ctx: dict, count: int) -> list[str]:
        sentences: list[str] = []
        while len(sentences) < count:
            sentence = self._fill(_C_ANSWER, ctx)
            if sentence not in sentences:  # one template twice in an answer reads as a glitch
                sentences.append(sentence)
        return sentences

    def _answer(self, ctx: dict, short: bool = False) -> str:
        if short:
            return " ".join(self._sentences(ctx, 1 + int(self._random() * 3)))
        if self._random() < 0.15:  # a list answer now and then, as assistants write them
            count = 2 + int(self._random() * 3)
            marker = "- " if self._random() < 0.5 else None
            items = self._sentences(ctx, count)
            lines = [f"{marker or f'{n}. '}{item}" for n, item in enumerate(items, 1)]
            return f"Here are {_SMALL[count - 2]} things to try:\n" + "\n".join(lines)
        parts = [self._fill(_C_OPENER, ctx), *self._sentences(ctx, 2 + int(self._random() * 3))]
        parts.append(self._fill(_C_CLOSER, ctx))
        return " ".join(part for part in parts if part)

    def _question(self, ctx: dict) -> str:
        return self._fill(_C_PREFIX, ctx) + self._fill(_C_QUESTION, ctx) + self._fill(_C_SUFFIX, ctx)

    def conversation(self, system_share: float = 0.15) -> tuple[tuple[str, str], ...]:
        ctx = self._context()
        messages = []
        if self._random() < system_share:
            messages.append(("system", self._fill(_C_SYSTEM, ctx)))
        messages += [("user", self._question(ctx)), ("assistant", self._answer(ctx))]
        draw = self._random()
        for _ in range(0 if draw < 0.6 else 1 if draw < 0.9 else 2):  # 60% one exchange, 30% two, 10% three
            messages += [("user", self._fill(_C_FOLLOWUP, ctx)), ("assistant", self._answer(ctx, short=True))]
        return tuple(messages)

    # -- formats --

    def _render(self, fmt: str, payload) -> dict:
        if fmt == "alpaca":
            instruction, extra, output = payload
            return {"instruction": instruction, "input": extra, "output": output}
        if fmt == "sharegpt":
            return {"conversations": [{"from": _SHAREGPT_ROLE[r], "value": c} for r, c in payload]}
        if fmt == "openai_parts":
            return {"messages": [{"role": r, "content": [{"type": "text", "text": c}]} for r, c in payload]}
        return {"messages": [{"role": r, "content": c} for r, c in payload]}

    def _alpaca_payload(self, conversation) -> tuple[str, str, str] | None:
        """Alpaca holds one exchange and no system turn; None when the conversation has more."""
        if len(conversation) != 2 or conversation[0][0] != "user":
            return None
        return (conversation[0][1], "", conversation[1][1])

    def clean(self, weights: tuple[float, ...]) -> tuple[dict, str]:
        conversation = self.conversation()
        fmt = self._choose_format(weights)
        payload = conversation
        if fmt == "alpaca":
            payload = self._alpaca_payload(conversation)
            if payload is None:  # more than one exchange: any chat format holds it
                fmt = self._pick(("sharegpt", "openai", "openai_parts"))
                payload = conversation
            elif self._random() < 0.4:  # the instruction / input split of real Alpaca data
                payload = (self._pick(_ALPACA_INSTRUCTIONS), payload[0], payload[2])
        record = self._render(fmt, payload)
        if fmt == "openai" and self._random() < 0.03:
            record["label"] = True  # KTO rows with a positive label are ordinary examples
        texts = payload if fmt == "alpaca" else [content for _, content in payload]
        words = sum(text.count(" ") + 1 for text in texts if text)
        self._remember(fmt, payload, words)
        return record, fmt

    def _choose_format(self, weights: tuple[float, ...]) -> str:
        draw, total = self._random(), 0.0
        for fmt, weight in zip(FORMATS, weights):
            total += weight
            if draw < total:
                return fmt
        return FORMATS[-1]

    def _remember(self, fmt: str, payload, words: int) -> None:
        # Algorithm R: every earlier base row is equally likely to be copied, with bounded memory.
        if words < NEAR_DUPLICATE_MIN_WORDS:
            return
        self._reservoir_seen += 1
        if len(self._reservoir) < RESERVOIR_SIZE:
            self._reservoir.append((fmt, payload))
        else:
            slot = int(self._random() * self._reservoir_seen)
            if slot < RESERVOIR_SIZE:
                self._reservoir[slot] = (fmt, payload)

    # -- duplicates --

    def _base(self) -> tuple[str, object]:
        if not self._reservoir:
            raise AssertionError("a duplicate was scheduled before any clean row; see _schedule")
        return self._pick(self._reservoir)

    def _switch_format(self, fmt: str, payload) -> tuple[str, object]:
        """The same conversation in another format, where the normalizer yields identical messages."""
        if fmt == "alpaca":
            instruction, extra, output = payload
            if extra:
                return fmt, payload  # instruction + input would be joined: keep it Alpaca
            return self._pick(("sharegpt", "openai", "openai_parts")), (("user", instruction), ("assistant", output))
        options = [f for f in FORMATS if f != fmt and (f != "alpaca" or self._alpaca_payload(payload))]
        target = self._pick(options)
        return target, (self._alpaca_payload(payload) if target == "alpaca" else payload)

    def exact_duplicate(self) -> dict:
        fmt, payload = self._base()
        # Variants in turn rather than at random, so even a small sample holds every one of them.
        variant = _EXACT_VARIANTS[self._exact_duplicates % len(_EXACT_VARIANTS)]
        self._exact_duplicates += 1
        if variant == "format":
            fmt, payload = self._switch_format(fmt, payload)
        elif variant != "verbatim":
            change = {"whitespace": self._whitespace, "case": self._case, "nfkc": self._nfkc}[variant]
            payload = self._edit_one(fmt, payload, change)
        return self._render(fmt, payload)

    def near_duplicate(self) -> dict:
        # Two near-duplicates of one base can get the same edit (a base with a single synonym):
        # they would be exact duplicates of each other, so draw again.
        for _ in range(20):
            fmt, payload = self._base()
            edited = self._edit_one(fmt, payload, self._small_edit, longest=True)
            if edited not in self._near_duplicates:
                break
        self._near_duplicates.add(edited)  # ~3% of rows: small next to the files
        if fmt != "alpaca" and self._random() < 0.3:
            fmt, edited = self._switch_format(fmt, edited)
        return self._render(fmt, edited)

    def _edit_one(self, fmt: str, payload, change, longest: bool = False):
        """Apply `change` to one text of the payload (the longest one when asked)."""
        texts = list(payload) if fmt == "alpaca" else [content for _, content in payload]
        if longest:
            index = max(range(len(texts)), key=lambda i: len(texts[i]))
        else:
            index = int(self._random() * len(texts))
            while not texts[index]:
                index = (index + 1) % len(texts)
        texts[index] = change(texts[index])
        if fmt == "alpaca":
            return tuple(texts)
        return tuple((role, text) for (role, _), text in zip(payload, texts))

    def _whitespace(self, text: str) -> str:
        words = text.split(" ")
        for _ in range(1 + int(self._random() * 3)):
            i = int(self._random() * len(words))
            words[i] = words[i] + self._pick(("  ", "\n", "\t", "   "))
        return " \n" + " ".join(words) + "  "

    def _case(self, text: str) -> str:
        return text.upper() if self._random() < 0.7 else text.lower()

    def _nfkc(self, text: str) -> str:
        # Characters NFKC maps back: no-break space, fullwidth digits, the "fi" ligature.
        if any(c.isdigit() for c in text) and self._random() < 0.5:
            return "".join(chr(ord(c) + 0xFEE0) if "0" <= c <= "9" else c for c in text)
        if "fi" in text and self._random() < 0.5:
            return text.replace("fi", "\ufb01")
        return text.replace(" ", "\u00a0", 1 + int(self._random() * 3))

    def _small_edit(self, text: str) -> str:
        words = text.split(" ")
        for edit in self._rng.sample(("synonym", "typo", "punctuation", "insert"), 4):
            start = int(self._random() * len(words))
            for offset in range(len(words)):
                i = (start + offset) % len(words)
                edited = self._edit_word(edit, words[i])
                if edited is not None:
                    return " ".join(words[:i] + [edited] + words[i + 1 :])
        raise AssertionError(f"no word of {text!r} can be edited")

    def _edit_word(self, edit: str, word: str) -> str | None:
        core = word.rstrip(".,;:!?")
        tail = word[len(core) :]
        if edit == "synonym":
            swap = _SYNONYMS.get(core.lower())
            if swap is None:
                return None
            return (swap.capitalize() if core[:1].isupper() else swap) + tail
        if edit == "typo":
            typo = _TYPOS.get(core.lower())
            if typo is None:
                return None
            return (typo.capitalize() if core[:1].isupper() else typo) + tail
        if edit == "punctuation":
            if tail == ",":
                return core  # a dropped comma
            if tail == "." and core:
                return core + "!"
            return None
        if core.isalpha():  # insert a filler word after this one
            return word + " " + self._pick(_FILLERS)
        return None

    # -- rows for every removal and rejection --

    def too_long(self, weights: tuple[float, ...]) -> dict:
        ctx = self._context()
        target = 4000 + int(self._random() * 1500)  # words; ~1.3 Mistral tokens each, so > 5000 tokens
        paragraphs, words = [], 0
        while words < target:
            paragraph = " ".join(self._sentences(ctx, 5 + int(self._random() * 4)))
            words += paragraph.count(" ") + 1
            paragraphs.append(paragraph)
        conversation = (("user", self._fill(_C_LONG, ctx)), ("assistant", "\n\n".join(paragraphs)))
        fmt = self._choose_format(weights)
        payload = self._alpaca_payload(conversation) if fmt == "alpaca" else conversation
        return self._render(fmt, payload)

    def invalid_json_line(self, dumps) -> str:
        record = self._render(self._pick(("sharegpt", "openai")), self.conversation())
        line = dumps(record)
        draw = self._random()
        if draw < 0.7:  # a line cut short, as by an interrupted write; a proper prefix never parses
            return line[: 1 + int(self._random() * (len(line) - 2))]
        if draw < 0.85:
            return repr(record)  # Python repr: single quotes
        return line[:-1] + ",}"  # trailing comma

    def not_an_object(self, dumps) -> str:
        options = ([1, 2], "just a string", 42, None, True, [{"role": "user", "content": "hi"}])
        return dumps(self._pick(options))

    def unknown_format(self) -> dict:
        ctx = self._context()
        draw = self._random()
        if draw < 0.4:
            return {"title": self._question(ctx), "body": self._answer(ctx), "tags": [ctx["domain"]]}
        if draw < 0.8:
            return {"id": int(self._random() * 10**6), "score": round(self._random(), 3), "votes": 7}
        return {}

    def malformed_conversation(self) -> dict:
        conversation = self.conversation(system_share=0.0)
        draw = self._random()
        if draw < 0.4:  # a message that is a bare string, not an object
            return {"conversations": [content for _, content in conversation]}
        if draw < 0.7:
            record = self._render("openai", conversation)
            record["messages"].insert(1, None)
            return record
        return {"messages": conversation[0][1]}  # a string where the list belongs

    def unsupported_role(self) -> dict:
        ctx = self._context()
        question, answer = self._question(ctx), self._answer(ctx, short=True)
        call = json.dumps({"name": "lookup_" + ctx["verb"].replace(" ", "_"), "arguments": {"topic": ctx["noun"]}})
        result = json.dumps({"result": ctx["noun2"], "count": int(self._random() * 100)})
        if self._random() < 0.5:
            turns = [("human", question), ("function_call", call), ("observation", result), ("gpt", answer)]
            return {"conversations": [{"from": r, "value": c} for r, c in turns]}
        role = self._pick(("tool", "tool", "function"))
        turns = [("user", question), ("assistant", "Let me look that up."), (role, result), ("assistant", answer)]
        return {"messages": [{"role": r, "content": c} for r, c in turns]}

    def unsupported_content(self) -> dict:
        record = self._render("openai_parts", self.conversation(system_share=0.0))
        messages = record["messages"]
        if self._random() < 0.6:
            url = f"https://example.com/images/{int(self._random() * 10**6)}.png"
            messages[0]["content"].append({"type": "image_url", "image_url": {"url": url}})
        else:
            thought = {"type": "reasoning", "text": "Let me think about what the user needs first."}
            messages[1]["content"].insert(0, thought)
        return record

    def bad_role_order(self) -> dict:
        conversation = list(self.conversation(system_share=0.0))
        while len(conversation) < 4:  # user, assistant, SYSTEM, user, assistant
            conversation += list(self.conversation(system_share=0.0))[:2]
        conversation.insert(2, ("system", self._fill(_C_SYSTEM, self._context())))
        return self._render(self._pick(("sharegpt", "openai")), conversation)

    def no_assistant_turn(self) -> dict:
        return self._render(self._pick(("sharegpt", "openai")), (("user", self._question(self._context())),))

    def empty_conversation(self) -> dict:
        blanks = ("", " ", "\n", "  \n\t")
        draw = self._random()
        if draw < 0.2:
            return {"instruction": "", "input": "", "output": ""}
        conversation = (("user", self._pick(blanks)), ("assistant", self._pick(blanks)))
        return self._render("sharegpt" if draw < 0.6 else "openai", conversation)

    def special_token(self) -> dict:
        ctx = self._context()
        conversation = list(self.conversation(system_share=0.0))
        index = 1 if self._random() < 0.6 else 0
        role, content = conversation[index]
        conversation[index] = (role, content + " " + self._fill(_C_SPECIAL, ctx))
        return self._render(self._pick(("sharegpt", "openai")), conversation)

    def negative_label(self) -> dict:
        record = self._render("openai", self.conversation())
        record["label"] = False
        return record

    def preference_pair(self) -> dict:
        ctx = self._context()
        return {
            "conversations": [{"from": "human", "value": self._question(ctx)}],
            "chosen": {"from": "gpt", "value": self._answer(ctx)},
            "rejected": {"from": "gpt", "value": self._pick(_REJECTED_ANSWERS)},
        }

    def hh_transcript(self) -> dict:
        conversation = self.conversation(system_share=0.0)
        prompt = "".join(
            f"\n\n{'Human' if role == 'user' else 'Assistant'}: {content}" for role, content in conversation[:-1]
        )
        return {
            "chosen": f"{prompt}\n\nAssistant: {conversation[-1][1]}",
            "rejected": f"{prompt}\n\nAssistant: {self._pick(_REJECTED_ANSWERS)}",
        }


# --- layout ------------------------------------------------------------------------------------------


def shard_names(shards: int) -> list[str]:
    """File names in shard order; the last of two or more is gzip."""
    names = [f"shard-{index:05d}.jsonl" for index in range(shards)]
    if shards >= 2:
        names[-1] += ".gz"
    return names


def _format_weights(shard: int) -> tuple[float, ...]:
    # Each shard favours one format (ShareGPT, OpenAI, Alpaca in turn) and still holds all of them.
    favourite = ("sharegpt", "openai", "alpaca")[shard % 3]
    weights = {"sharegpt": 0.15, "openai": 0.1, "openai_parts": 0.1, "alpaca": 0.15}
    weights[favourite] += 0.5
    return tuple(weights[fmt] for fmt in FORMATS)


def _schedule(config: SampleConfig) -> tuple[np.ndarray, set[int], dict[str, int]]:
    """Kind of every row (codes into KINDS) and the rows that get a blank line before them."""
    rng = np.random.default_rng(config.seed)
    counts = {kind: max(1, int(fraction * config.rows + 0.5)) for kind, fraction in PLANTED_FRACTIONS}
    # The first rows are clean so that duplicates always have earlier rows to copy.
    warmup = min(50, config.rows // 10)
    positions = rng.permutation(config.rows - warmup)[: sum(counts.values())] + warmup
    kinds = np.zeros(config.rows, dtype=np.int8)
    start = 0
    for kind, count in counts.items():
        kinds[positions[start : start + count]] = KINDS.index(kind)
        start += count
    blanks = rng.choice(config.rows, size=max(2, config.rows // BLANK_LINE_EVERY), replace=False)
    counts = {CLEAN: config.rows - sum(counts.values()), **counts}
    return kinds, {int(b) for b in blanks}, counts


def _check_output_dir(output: Path, names: list[str]) -> None:
    # Refuse to mix with other files: the job reads the whole directory, so a stale shard from an
    # earlier, larger sample would silently join this one. Our own names are overwritten (re-runs).
    if output.exists():
        if not output.is_dir():
            raise FileExistsError(f"--output {output} is a file; give a directory")
        ours = set(names) | {f".{name}.tmp" for name in names}
        others = sorted(p.name for p in output.iterdir() if p.name not in ours)
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise FileExistsError(f"--output {output} already holds other files ({shown}); use an empty directory")
    output.mkdir(parents=True, exist_ok=True)


def write_sample(output_dir: str | Path, config: SampleConfig) -> dict:
    """Write the sample shards into `output_dir`; return what was written, per planted kind.

    Returns {"output_dir", "rows", "shards", "seed", "files": [{"name", "rows", "blank_lines",
    "bytes"}], "blank_lines", "kinds": {kind: rows} (KINDS order), "formats": {format: clean rows}}.
    """
    output = Path(output_dir)
    names = shard_names(config.shards)
    _check_output_dir(output, names)
    kinds, blanks, counts = _schedule(config)
    generator = _Generator(config.seed)
    formats = dict.fromkeys(FORMATS, 0)
    files = []
    for shard, name in enumerate(names):
        first, last = shard * config.rows // config.shards, (shard + 1) * config.rows // config.shards
        # Alternate escaping and separators per shard: both are valid JSON a reader must take.
        ascii_only, compact = shard % 2 == 0, shard % 4 == 1
        separators = (",", ":") if compact else (", ", ": ")

        def dumps(value, ascii_only=ascii_only, separators=separators) -> str:
            return json.dumps(value, ensure_ascii=ascii_only, separators=separators)

        weights = _format_weights(shard)
        tmp = output / f".{name}.tmp"
        with open(tmp, "wb") as raw:
            # No file name and mtime 0 in the gzip header: byte-identical files for the same config.
            sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if name.endswith(".gz") else raw
            lines, blank_lines = [], 0
            for row in range(first, last):
                if row in blanks:
                    lines.append("")
                    blank_lines += 1
                lines.append(_row_line(generator, KINDS[kinds[row]], weights, dumps, formats))
                if len(lines) >= _CHUNK_LINES:
                    sink.write(("\n".join(lines) + "\n").encode("utf-8"))
                    lines = []
            if lines:
                sink.write(("\n".join(lines) + "\n").encode("utf-8"))
            if sink is not raw:
                sink.close()
        os.replace(tmp, output / name)  # a crash never leaves a half-written shard under its real name
        size = (output / name).stat().st_size
        files.append({"name": name, "rows": last - first, "blank_lines": blank_lines, "bytes": size})
    summary = {
        "output_dir": str(output),
        "rows": config.rows,
        "shards": config.shards,
        "seed": config.seed,
        "files": files,
        "blank_lines": sum(f["blank_lines"] for f in files),
        "kinds": counts,
        "formats": formats,
    }
    logger.info("wrote %d sample rows in %d shards to %s", config.rows, config.shards, output)
    return summary


def _row_line(generator: _Generator, kind: str, weights, dumps, formats: dict) -> str:
    if kind == CLEAN:
        record, fmt = generator.clean(weights)
        formats[fmt] += 1
        return dumps(record)
    if kind == schema.INVALID_JSON:
        return generator.invalid_json_line(dumps)
    if kind == schema.NOT_AN_OBJECT:
        return generator.not_an_object(dumps)
    if kind == schema.TOO_LONG:
        return dumps(generator.too_long(weights))
    return dumps(getattr(generator, _MAKERS[kind])())


# The _Generator method that makes each remaining kind.
_MAKERS = {
    schema.EXACT_DUPLICATE: "exact_duplicate",
    schema.NEAR_DUPLICATE: "near_duplicate",
    schema.UNKNOWN_FORMAT: "unknown_format",
    schema.MALFORMED_CONVERSATION: "malformed_conversation",
    schema.UNSUPPORTED_ROLE: "unsupported_role",
    schema.UNSUPPORTED_CONTENT: "unsupported_content",
    schema.BAD_ROLE_ORDER: "bad_role_order",
    schema.NO_ASSISTANT_TURN: "no_assistant_turn",
    schema.EMPTY_CONVERSATION: "empty_conversation",
    schema.SPECIAL_TOKEN_IN_CONTENT: "special_token",
    schema.NEGATIVE_LABEL: "negative_label",
    schema.PREFERENCE_PAIR: "preference_pair",
    HH_TRANSCRIPT: "hh_transcript",
}


# --- command line ------------------------------------------------------------------------------------


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SampleConfig()
    parser.add_argument("--rows", type=int, default=defaults.rows, help=f"rows to write (default {defaults.rows})")
    parser.add_argument(
        "--shards", type=int, default=defaults.shards, help=f"JSONL files, the last gzip (default {defaults.shards})"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default 0)")
    parser.add_argument("--output", required=True, help="directory to write (created; must hold no other files)")


def run_sample(args: argparse.Namespace) -> dict:
    config = SampleConfig(rows=args.rows, shards=args.shards, seed=args.seed)
    return write_sample(args.output, config)
