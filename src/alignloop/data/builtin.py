"""The built-in prompt set: several hundred instructions across the InstructGPT use-case categories.

The demo and the tests need prompts without a download, so they are generated here from
templates and fillers written for this project (topics x templates per category). Every
prompt is something a 135M chat model can answer in a sentence or two, and names its subject
in plain key words ("poem", "ocean") so a labeler, simulated or human, can check coverage.

The set is deliberately a little dirty, like real traffic, so the prompt pipeline has work
to do: two synthetic users submit more than the 200-prompt cap, and some prompts come back
later as near-duplicates (changed case or spacing, or the same long instruction with a tail
added) from the same or another user.
"""

from __future__ import annotations

import random

from alignloop.config import DataConfig
from alignloop.data.pipeline import user_split
from alignloop.data.records import CATEGORIES, Prompt, stable_id

#: Prompts submitted by the two heavy users (both above the paper's 200-per-user cap).
HEAVY_USER_PROMPTS: tuple[int, int] = (230, 210)
#: How many near-duplicate resubmissions are added to the base prompts.
N_NEAR_DUPLICATES = 36

_SCENES = [
    "the ocean", "a rainy morning", "a lost kitten", "autumn leaves", "a mountain village", "fresh bread",
    "a friendly robot", "the night sky", "a summer garden", "an old lighthouse", "a busy train station",
    "a snowy forest",
]  # fmt: skip
_CONCEPTS = [
    "photosynthesis", "gravity", "a rainbow", "the water cycle", "a volcano", "electricity", "the internet",
    "a vaccine", "recycling", "a solar panel", "the moon", "sleep", "a compass", "inflation", "a thunderstorm",
    "the heart",
]  # fmt: skip
_PLANS = [
    "a school science fair project", "a rainy weekend", "a small garden", "a birthday party", "a healthy breakfast",
    "a team meeting icebreaker", "a family picnic", "saving money", "learning a new language", "a short road trip",
    "a book club", "reducing plastic waste", "a charity fundraiser", "staying active at home",
]  # fmt: skip
_EVENTS = [
    "adopted a puppy", "moved to a new city", "started a new job", "finished my exams", "bought my first bike",
    "joined a gym", "planted tomatoes", "learned to bake bread", "got a new laptop", "started learning guitar",
    "booked a trip to Spain", "made a new friend",
]  # fmt: skip
_MOODS = [
    "tired", "nervous about a test", "lonely", "excited", "bored", "stressed about work", "happy",
    "worried about money",
]  # fmt: skip
_SENTENCES = [
    "Send me the report now.", "The meeting was boring and too long.", "I can't come to your party.",
    "Your code has many bugs.", "We are out of coffee again.", "The train is late every single day.",
    "Give me back my book.", "This soup is cold.", "I don't understand your email.", "Stop making so much noise.",
    "The shop closes early on Sundays.", "You forgot to call me yesterday.", "The weather ruined our picnic.",
    "The printer is broken again.",
]  # fmt: skip
# Short passages with (question, question) pairs: summarization and closed-domain QA share them.
_PASSAGES: list[tuple[str, str, str]] = [
    ("The city opened a new park with a lake, a playground and a small cafe. Families visited all weekend and "
     "the cafe ran out of ice cream by Sunday.", "What ran out at the cafe?", "What did the city open?"),
    ("Maria practised the piano every evening for a year. At the spring concert she played without a single "
     "mistake and the audience cheered.", "What instrument did Maria practise?",
     "When did Maria play without a mistake?"),
    ("Heavy rain flooded the main road on Monday. Buses took a longer route and many students arrived late to "
     "school.", "What flooded on Monday?", "Why did students arrive late?"),
    ("A local bakery started selling bread made with oats. The new bread sold out every morning, so the bakery "
     "hired two more bakers.", "What was the new bread made with?", "How many bakers did the bakery hire?"),
    ("Scientists counted the birds on the island for ten years. The number of seabirds doubled after rats were "
     "removed from the island.", "How long did scientists count the birds?",
     "What happened after the rats were removed?"),
    ("The library now lends tools as well as books. People can borrow a drill or a ladder for a week with their "
     "library card.", "What can people borrow from the library now?", "How long can people keep a borrowed tool?"),
    ("Tom wanted to run a marathon. He trained slowly, added one kilometre each week, and finished his first race "
     "in just under five hours.", "How did Tom train for the marathon?", "How long did Tom take to finish?"),
    ("The company moved its meetings to the morning. Workers said they had more energy and the meetings ended "
     "sooner.", "When are the meetings held now?", "What did workers say about the change?"),
    ("A small town replaced its street lamps with LED lights. The town now spends less on electricity and the "
     "streets are brighter at night.", "What did the town replace?", "Why does the town spend less on electricity?"),
    ("Two friends started a club that cleans the beach every Saturday. After three months the beach had far less "
     "plastic and more visitors.", "How often does the club clean the beach?", "What changed after three months?"),
    ("The museum added a room where children can touch old tools. Visits from schools rose sharply in the first "
     "year.", "What can children touch in the new room?", "What rose in the first year?"),
    ("Our team tested two website designs. The simpler design had bigger buttons and more people finished their "
     "orders with it.", "How many designs did the team test?", "Which design worked better?"),
    ("A farmer planted flowers between her rows of vegetables. Bees visited more often and her tomato harvest grew "
     "by a third.", "What did the farmer plant between the vegetables?", "How much did the tomato harvest grow?"),
    ("The river froze for the first time in twenty years. Skaters came from nearby villages, and the ice melted a "
     "week later.", "When did the river last freeze?", "How long did the ice last?"),
    ("Sam lost his wallet on the bus. The driver found it, and the bus company called Sam the same afternoon to "
     "return it.", "Where did Sam lose his wallet?", "Who found the wallet?"),
    ("The school switched to a four-day week for one term. Teachers reported calmer classes, but some parents "
     "struggled to find childcare.", "How long did the four-day week last?", "What problem did some parents have?"),
    ("A new bike lane opened along the harbour. Cycling to work doubled there within six months, and car traffic "
     "fell slightly.", "Where did the new bike lane open?", "What happened to cycling to work?"),
    ("The weather service warned of strong winds on Friday. Ferries stayed in port and the outdoor market moved "
     "into the town hall.", "What did the weather service warn about?", "Where did the market move?"),
    ("Lena grew herbs on her small balcony. By summer she had enough basil and mint to share with all her "
     "neighbours.", "Where did Lena grow herbs?", "Which herbs did Lena grow?"),
    ("The zoo welcomed a baby elephant in May. Thousands of visitors came to see her, and the zoo asked the public "
     "to choose her name.", "When was the baby elephant born?", "Who will choose the elephant's name?"),
]  # fmt: skip
_REVIEWS = [
    "The pizza arrived hot and tasted amazing.", "The hotel room was dirty and the staff were rude.",
    "I love this phone, the battery lasts all day.", "The movie was slow and I fell asleep.",
    "Great service, we will definitely come back!", "My package arrived broken and late.",
    "This book made me laugh and cry, wonderful.", "The shoes fell apart after one week.",
    "Friendly teacher, clear lessons, highly recommended.", "The app crashes every time I open it.",
    "Best coffee in town, and the barista is lovely.", "Too expensive for such a small portion.",
    "The concert was fantastic from start to finish.", "Customer support never answered my emails.",
    "Comfortable chair and easy to assemble.", "The paint peeled off within a month.",
]  # fmt: skip
_ANIMALS = [
    "a dolphin", "an eagle", "a salmon", "a lizard", "a bat", "a penguin", "a shark", "a turtle", "a horse", "an owl",
    "a crocodile", "a whale", "a parrot", "a snake", "a goldfish", "a rabbit",
]  # fmt: skip
_FACT_SENTENCES = [
    "Anna met David in Paris on 3 May and they walked 12 kilometres.",
    "On 14 July, Omar flew from Cairo to Rome with 2 suitcases.",
    "Priya and Ken opened a shop in Osaka on 1 March, selling 40 kinds of tea.",
    "The team from Lisbon, led by Marta, won 3 games on 9 June.",
    "Leo called his sister Emma in Toronto on 22 December for 45 minutes.",
    "On 5 April, Yuki and Ben ran 10 kilometres through Berlin.",
    "Carlos sent 15 letters from Madrid to his friend Ines on 30 August.",
    "Fatima visited Nairobi and Accra between 2 and 19 October with 4 colleagues.",
    "Grace bought 6 paintings in Dublin from an artist named Sean on 11 November.",
    "On 18 January, Mei taught 25 students in Singapore with her friend Raj.",
    "Jonas and Sofia drove 300 kilometres from Oslo to Bergen on 7 September.",
    "The chef Luca served 80 guests in Milan on 24 February.",
    "Aisha met Pedro at a conference in Mexico City on 16 May with 200 people.",
    "On 2 June, Hana mailed 3 parcels from Seoul to her cousin Min in Busan.",
    "Olga rode a train from Warsaw to Prague on 13 March and read 2 books.",
    "Noah planted 50 trees near Denver with his neighbour Lily on 21 April.",
    "Ravi and Chloe moved to Sydney on 8 August with 1 dog and 2 cats.",
    "On 27 October, Elena sang for 500 people in Vienna with her brother Max.",
    "Kofi sold 120 mangoes at the market in Kumasi on 4 January.",
    "Sara and Tomas hiked 18 kilometres around Zurich on 12 July.",
]
_THINGS = [
    "octopuses", "honey bees", "the moon", "penguins", "volcanoes", "tea", "chess", "the Sahara desert",
    "elephants", "rainbows", "snails", "the Eiffel Tower", "bananas", "owls", "glaciers", "jellyfish",
]  # fmt: skip
_TASKS = [
    "boil an egg", "plant a seed", "tie a shoelace", "make a paper plane", "brew green tea",
    "wash your hands properly", "start a journal", "clean a bicycle chain", "make a sandwich", "fold a T-shirt",
    "write a thank-you note", "water a cactus", "pack a suitcase", "set a daily alarm", "make lemonade",
    "sharpen a pencil",
]  # fmt: skip
_ACTIVITIES = [
    "cycling at night", "swimming in the sea", "hiking in summer", "using a kitchen knife", "cooking with oil",
    "climbing a ladder", "walking a dog in winter", "camping in a forest", "running in hot weather",
    "carrying heavy boxes", "skiing for the first time", "using a hair dryer", "crossing a busy street",
    "lighting candles", "kayaking on a lake", "working at a computer",
]  # fmt: skip
_JOKE_TOPICS = [
    "cats", "computers", "pizza", "teachers", "the weather", "vegetables", "robots", "dinosaurs", "coffee", "socks",
    "the ocean", "libraries", "bicycles", "ghosts", "music", "homework",
]  # fmt: skip

# Every fixed lead-in stays well under the default 64-character dedupe prefix, so two
# different fillers never look like duplicates of each other.
_TEMPLATES: dict[str, list[tuple[str, list[str]]]] = {
    "generation": [
        (t, _SCENES)
        for t in (
            "Write a short poem about {}.",
            "Write a two-sentence story about {}.",
            "Write a haiku about {}.",
            "Write the chorus of a happy song about {}.",
            "Write a diary entry of three sentences about {}.",
            "Write a funny limerick about {}.",
            "Describe {} in three vivid sentences.",
        )
    ],
    "open_qa": [
        (t, _CONCEPTS)
        for t in (
            "What is {}? Explain it simply.",
            "Explain {} to a ten-year-old.",
            "Give two facts about {}.",
            "Why does {} matter in everyday life?",
            "What is a common misconception about {}?",
        )
    ],
    "brainstorming": [
        (t, _PLANS)
        for t in (
            "List three ideas for {}.",
            "Brainstorm five fun activities for {}.",
            "Suggest three creative themes for {}.",
            "What are four tips for {}?",
            "Give me a short list of ideas for {}.",
            "Brainstorm three ways to make {} more fun.",
        )
    ],
    "chat": [
        (t, _EVENTS)
        for t in (
            "Hi! I just {}. What should I do first?",
            "Guess what, I just {}! Any tips for me?",
            "Hello, I just {} and I am a bit nervous. Any advice?",
            "I just {}. Can you congratulate me?",
        )
    ]
    + [
        (t, _MOODS)
        for t in (
            "I feel {} today. Can you cheer me up?",
            "I am {}. What is one small thing I can do?",
            "Hey, I'm {}. Can we chat for a moment?",
            "Today I feel {}. Say something kind to me.",
        )
    ],
    "rewrite": [
        (t, _SENTENCES)
        for t in (
            'Rewrite this sentence to be more polite: "{}"',
            'Make this sentence shorter: "{}"',
            'Rewrite this sentence in a formal tone: "{}"',
            'Rewrite this sentence so a child can understand it: "{}"',
            'Rewrite this sentence to sound more positive: "{}"',
            'Rewrite this sentence with friendlier words: "{}"',
        )
    ],
    "summarization": [
        (t, [p for p, _, _ in _PASSAGES])
        for t in (
            "Summarize in one sentence: {}",
            "Give a short summary of this text: {}",
            "What is the main point of this text? {}",
            "Summarize this for a busy reader in ten words: {}",
        )
    ],
    "classification": [
        (t, _REVIEWS)
        for t in (
            'Is this review positive or negative? "{}"',
            'Label the sentiment (positive or negative): "{}"',
            'Classify this customer review as positive or negative: "{}"',
        )
    ]
    + [
        (t, _ANIMALS)
        for t in ("Is {} a mammal, bird, fish or reptile?", "Classify {} as a mammal, bird, fish or reptile.")
    ],
    "closed_qa": [
        ("Question: {} Answer using only this text: {}", [f"{q}\x00{p}" for p, q1, q2 in _PASSAGES for q in (q1, q2)]),
        (
            "Using only the text below, answer: {}\nText: {}",
            [f"{q}\x00{p}" for p, q1, q2 in _PASSAGES for q in (q1, q2)],
        ),
    ],
    "extraction": [
        (t, _FACT_SENTENCES)
        for t in (
            'List the names of the people in this text: "{}"',
            'Extract the city names from this sentence: "{}"',
            'Find all the dates in this text: "{}"',
            'Pull out every number mentioned here: "{}"',
        )
    ],
    "other": [
        ("Tell me a fun fact about {}.", _THINGS),
        ("Explain how to {} in three simple steps.", _TASKS),
        ("Give one safety tip for {}.", _ACTIVITIES),
        ("Tell me a short joke about {}.", _JOKE_TOPICS),
        ("Give me a riddle about {}.", _JOKE_TOPICS),
    ],
}


def base_prompts() -> list[tuple[str, str]]:
    """Every (category, text) the templates produce, in a fixed order, without duplicates."""
    out: list[tuple[str, str]] = []
    for category in CATEGORIES:
        for template, fillers in _TEMPLATES[category]:
            for filler in fillers:
                out.append((category, template.format(*filler.split("\x00"))))
    return out


def _near_duplicate(text: str, kind: int) -> str:
    """A resubmission of ``text`` that the prefix dedupe must catch."""
    if kind == 0:
        return text.upper()
    if kind == 1:
        return "  " + "  ".join(text.lower().split()) + " "
    return text + " Please keep it brief."


def builtin_prompts(n_users: int = 60, seed: int = 0) -> list[Prompt]:
    """The built-in prompt set: all template prompts plus near-duplicates, spread over ``n_users`` users.

    Two users are the heavy users of :data:`HEAVY_USER_PROMPTS`; the rest submit between one
    and a few dozen prompts each. The heavy users are picked among those whom the pipeline
    puts in the training split for data seed ``seed`` (with the default split fractions):
    a 200-prompt user in a 10 % test split would make it larger than the training split. Near-duplicates always come
    after the prompt they copy, so dedupe (first occurrence wins) keeps the original.
    Deterministic for a given ``n_users`` and ``seed``.
    """
    if n_users < len(HEAVY_USER_PROMPTS) + 1:
        raise ValueError(f"n_users: need at least {len(HEAVY_USER_PROMPTS) + 1} users, got {n_users}")
    rng = random.Random(seed)
    items = base_prompts()
    rng.shuffle(items)
    # Near-duplicates: inserted at a random later position than their original.
    sources = [items[i] for i in rng.sample(range(len(items) - 2), N_NEAR_DUPLICATES)]
    for k, (category, text) in enumerate(sources):
        kind = k % 3
        if kind == 2 and len(text) < 64:  # a tail only duplicates when the shared prefix is long
            kind = k % 2
        pos = items.index((category, text))
        items.insert(rng.randint(pos + 2, len(items)), (category, _near_duplicate(text, kind)))

    users = [f"user-{u:03d}" for u in range(n_users)]
    data_cfg = DataConfig(seed=seed)
    in_train = [u for u in users if user_split(u, data_cfg) == "train"]
    heavy = (in_train + [u for u in users if u not in in_train])[: len(HEAVY_USER_PROMPTS)]
    owners = [user for user, count in zip(heavy, HEAVY_USER_PROMPTS, strict=True) for _ in range(count)]
    light = [u for u in users if u not in heavy]
    owners += light  # every light user submits at least one prompt
    weights = [rng.uniform(0.2, 2.0) for _ in light]
    owners += rng.choices(light, weights=weights, k=max(0, len(items) - len(owners)))
    owners = owners[: len(items)]
    rng.shuffle(owners)
    return [
        Prompt(
            id=stable_id("builtin", str(seed), str(i), text), text=text, user_id=user, category=cat, source="builtin"
        )
        for i, ((cat, text), user) in enumerate(zip(items, owners, strict=True))
    ]
