"""Regenerate the sample datasets in data_samples/ (deterministic: same bytes every run).

    python data_samples/make_samples.py

Writes:
- prompts.parquet: ~300 rows. Chat rows under 4 shared system prompts (questions, rewrites,
  summaries, support-ticket classification), plain prompt rows (a shared few-shot sentiment
  block, free-form instructions, translations), ~25% exact duplicates, and a handful of bad
  rows (null prompt, empty prompt, whitespace prompt, messages with a missing role or content,
  an empty messages list, an invalid per-row max_tokens).
  Columns: id, task, category, prompt (string), messages (list<struct<role, content>>),
  max_tokens (int32, null = job default).
- openai_batch.jsonl: 24 OpenAI Batch API request lines (chat completions) including
  duplicates, one line of invalid JSON and one line without a body.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent

SYSTEM_QA = (
    "You are a knowledgeable and patient tutor. Answer the user's question accurately in two or "
    "three sentences, using plain language a curious teenager would understand. If the question "
    "rests on a false premise, say so politely and correct it."
)
SYSTEM_EDITOR = (
    "You are a careful copy editor at a technical publisher. Rewrite the text exactly as the "
    "user asks, keep its meaning, fix grammar and spelling along the way, and reply with the "
    "rewritten text only, without quotes or explanations."
)
SYSTEM_SUMMARY = (
    "You are a news desk assistant. Summarize the passage the user gives you in one sentence of "
    "at most twenty-five words, keeping names, numbers and dates exact. Do not add opinions or "
    "facts that are not in the passage."
)
SYSTEM_SUPPORT = (
    "You triage customer support tickets for an online electronics store. Classify the ticket "
    "into exactly one of: billing, shipping, returns, technical, account, other. Reply with the "
    "label only, in lowercase."
)

QUESTIONS = [
    "Why is the sky blue during the day but red at sunset?",
    "How do vaccines train the immune system?",
    "What causes the seasons on Earth?",
    "Why do cats purr?",
    "How does a refrigerator keep food cold?",
    "What is the difference between weather and climate?",
    "Why does ice float on water?",
    "How do bees make honey?",
    "What is inflation and why does it happen?",
    "How does GPS know where my phone is?",
    "Why do we have leap years?",
    "What is photosynthesis?",
    "How do noise-cancelling headphones work?",
    "Why is the ocean salty?",
    "What did the Rosetta Stone help scholars do?",
    "How do airplanes stay in the air?",
    "What is the difference between a virus and a bacterium?",
    "Why do onions make people cry?",
    "How does compound interest work?",
    "What causes earthquakes?",
    "Why do stars twinkle but planets mostly do not?",
    "How do solar panels turn sunlight into electricity?",
    "What is a black hole?",
    "Why did the Roman Empire split into east and west?",
    "How does the heart pump blood around the body?",
    "What is machine learning, in simple terms?",
    "Why do leaves change colour in autumn?",
    "How are rainbows formed?",
    "What is the greenhouse effect?",
    "Why does bread rise when it bakes?",
    "How do submarines dive and surface?",
    "What is the speed of light and why can't anything go faster?",
    "Why is the Great Wall of China not visible from the Moon with the naked eye?",
    "How do antibiotics work, and why do they not cure colds?",
    "What is the difference between an atom and a molecule?",
    "Why do we dream?",
    "How does a bill become a law in the United States?",
    "What causes the tides?",
    "Why do some metals rust and others do not?",
    "How does a microwave oven heat food?",
    "What is DNA made of?",
    "Why did the dinosaurs go extinct?",
    "How do credit scores work?",
    "What is the water cycle?",
    "Why do our ears pop on an airplane?",
    "How does a camera lens focus light?",
    "What is the difference between a comet and an asteroid?",
    "Why is Pluto no longer called a planet?",
    "How do electric cars recover energy when braking?",
    "What does a central bank do?",
    "Why do we get goosebumps?",
    "How do fish breathe underwater?",
    "What is the Pythagorean theorem used for?",
    "Why was the printing press so important?",
    "How do vaccines get tested before approval?",
    "What makes a desert a desert?",
    "Why do we yawn?",
    "How does Wi-Fi send data through the air?",
    "What is the difference between speed and velocity?",
    "Did Albert Einstein fail maths at school?",
]

REWRITE_TEXTS = [
    "me and him goes to the office every monday to check the server logs",
    "The meeting have been moved to thursday because alot of people was on holiday.",
    "Our product is super duper fast and honestly way better than anything else out there.",
    "Please be advised that the aforementioned documentation is in need of being updated at "
    "your earliest convenience.",
    "the app crash when you click save twice, we think its a race condition but not sure",
    "In the event that the system fails, the backup will be utilized in order to restore data.",
    "We was unable to reproduce the bug on our machines but will keep trying next week.",
    "Its important to remember that every user have different needs and expectations.",
    "The quarterly results was better then expected, revenue grew by 12 percent.",
    "Due to the fact that the library is deprecated, we should migrate to the new one.",
    "hey team, the build is broke again, can somebody who touched it last fix it asap",
    "This function takes in a list and it returns back a new list which is sorted.",
    "The new policy will effect all employees who's contracts start after January.",
    "At this point in time we do not have any plans to discontinue the legacy API.",
    "The results of the survey shows that most customers prefers email support.",
]
REWRITE_INSTRUCTIONS = [
    "Rewrite this in a formal, professional tone:",
    "Make this more concise:",
]

PASSAGES = [
    "On 14 March 2024 the city council of Riverton voted 7 to 2 to build a new public library "
    "on the site of the old bus depot. Construction is expected to cost 18 million dollars and "
    "to finish in 2026.",
    "Researchers at a university in Norway reported that a coating made from fish-scale "
    "collagen kept strawberries fresh for nine days, compared with four days for uncoated fruit.",
    "The national weather service issued a flood warning for three coastal counties on Sunday "
    "after two days of heavy rain. Officials advised residents near the river to move cars to "
    "higher ground.",
    "A local bakery in Millbrook donated 400 loaves of bread to the regional food bank this "
    "week, saying it wanted to help families during the school holidays.",
    "The company announced that its new electric van can travel 320 kilometres on one charge "
    "and will go on sale in Europe in September at a price of 42,000 euros.",
    "Astronomers using a space telescope detected water vapour in the atmosphere of a planet "
    "about 120 light-years away, orbiting a small red star in the habitable zone.",
    "After a six-month trial, a school district found that starting classes at 9:00 instead of "
    "8:00 cut student absences by 11 percent and improved average test scores slightly.",
    "The museum reopened on Friday after a two-year renovation that added a glass roof, a new "
    "children's gallery and step-free access to all five floors.",
    "A cargo ship that ran aground near the harbour entrance on Tuesday was refloated early on "
    "Thursday morning with help from four tugboats. No fuel leaked.",
    "The football club confirmed that its captain will miss the rest of the season with a knee "
    "injury suffered in Saturday's 2-1 win over their city rivals.",
    "Farmers in the valley say this year's apple harvest is 30 percent smaller than last year "
    "because a late frost in April damaged the blossoms.",
    "The government plans to plant 50 million trees over the next decade, focusing on river "
    "banks and former mining land, the environment minister said on Monday.",
    "A software update released on Wednesday fixes a security flaw that could let attackers "
    "read messages on older phones. Users are urged to install it immediately.",
    "The marathon drew a record 31,000 runners this year. The men's race was won in 2 hours 6 "
    "minutes and the women's race in 2 hours 21 minutes.",
    "Volunteers cleaned 12 kilometres of beach over the weekend and collected more than two "
    "tonnes of rubbish, most of it plastic bottles and fishing nets.",
    "The central bank kept its main interest rate at 4.5 percent on Thursday, saying inflation "
    "was falling but remained above its 2 percent target.",
    "A rare white giraffe was spotted in a national park in Kenya, rangers said, the first "
    "sighting there in more than three years.",
    "The airline will add direct flights between Lisbon and Toronto from May, with four "
    "flights a week during the summer season.",
    "A new study of 20,000 adults found that people who walked at least 7,000 steps a day had "
    "a lower risk of heart disease than those who walked fewer than 4,000.",
    "The city's first bike-sharing scheme launched with 600 bicycles at 45 stations; rides "
    "under 30 minutes are free for the first month.",
]

TICKETS = [
    "I was charged twice for order 55812, please refund one of the payments.",
    "My package was supposed to arrive on Monday and the tracking hasn't updated in five days.",
    "The headphones I bought stopped charging after a week. How do I send them back?",
    "I can't log in, it says my password is wrong but I just reset it.",
    "Does the X200 laptop support two external monitors over USB-C?",
    "Why is there a 4.99 fee on my invoice that wasn't shown at checkout?",
    "The box arrived crushed and the screen of the monitor is cracked.",
    "I want to change the email address on my account to my work address.",
    "My smart speaker keeps disconnecting from Wi-Fi every few minutes.",
    "Can I return an opened keyboard if I don't like the feel of the keys?",
    "Do you ship to the Canary Islands, and how long does it take?",
    "I never received the verification code to set up two-factor authentication.",
    "The discount code SPRING10 did not apply to my order total.",
    "My order says delivered but there's nothing at my door or with my neighbours.",
    "The phone gets very hot while charging, is that normal?",
    "Please delete my account and all my personal data.",
    "I returned a tablet three weeks ago and still haven't got my money back.",
    "Your website crashes every time I try to open the cart on my phone.",
    "Is it possible to pay in instalments for the 65 inch TV?",
    "I'd like to swap the black case I ordered for the blue one before it ships.",
    "Love the new camera, just wanted to say thanks for the fast delivery!",
    "The printer prints blank pages even though the ink cartridges are full.",
    "Someone changed the shipping address on my account without my permission.",
    "How do I update the firmware on my router?",
    "My invoice shows the wrong company name, can you issue a corrected one?",
    "The courier left a note but I can't find which depot to collect from.",
    "The replacement charger you sent is for a different model.",
    "I got two confirmation emails with different order numbers, did I order twice?",
]

FEW_SHOT = (
    "Classify the sentiment of each product review as positive, negative or mixed.\n\n"
    "Review: The battery lasts all day and the screen is gorgeous.\nSentiment: positive\n\n"
    "Review: It broke after two days and support never answered.\nSentiment: negative\n\n"
    "Review: Great sound, but the ear cushions get uncomfortable after an hour.\n"
    "Sentiment: mixed\n\n"
)
REVIEWS = [
    "Setup took five minutes and it has worked flawlessly since.",
    "The colour looked nothing like the photos and it smells of plastic.",
    "Fast shipping, decent quality, though the manual is useless.",
    "Absolutely love it, I bought a second one for my sister.",
    "It does the job, but the fan is louder than I expected.",
    "Stopped working after the first wash.",
    "Comfortable, light and the strap feels sturdy.",
    "Cheap price, cheap build. You get what you pay for.",
    "The app is clunky but the device itself is excellent.",
    "Arrived late and missing the power cable.",
    "Best kitchen gadget I've bought this year.",
    "Looks stylish, but the buttons are hard to press.",
    "Great value for money, would recommend to anyone.",
    "The zipper broke on day one.",
    "Sound quality is amazing for such a small speaker.",
]

INSTRUCTIONS = [
    "Write a haiku about the first snow of winter.",
    "Give me three ideas for a birthday party for a seven-year-old who loves dinosaurs.",
    "Explain recursion to a beginner programmer using a real-world analogy.",
    "List five tips for staying focused while working from home.",
    "Write a short, friendly reminder email about a team meeting on Friday at 10am.",
    "Suggest a name for a coffee shop that also sells used books.",
    "Write a two-line rhyming poem about a lazy cat.",
    "What are three good questions to ask at the end of a job interview?",
    "Describe the smell of rain to someone who has never experienced it.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Give a one-paragraph overview of the French Revolution.",
    "Write a product description for a reusable water bottle that keeps drinks cold for 24 hours.",
    "Suggest a simple vegetarian dinner I can cook in twenty minutes.",
    "Write an opening sentence for a mystery novel set in a lighthouse.",
    "Explain the difference between a list and a tuple in Python.",
    "Give me a packing list for a three-day hiking trip.",
    "Write a polite message declining an invitation to a wedding.",
    "What is a good way to learn vocabulary in a new language?",
    "Write a limerick about a programmer who never sleeps.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
]

TRANSLATIONS = [
    "Translate to French: Where is the nearest train station?",
    "Translate to Spanish: I would like a table for two, please.",
    "Translate to German: The meeting starts at nine o'clock.",
    "Translate to Italian: Thank you very much for your help.",
    "Translate to French: My flight has been delayed by two hours.",
    "Translate to Spanish: Could you speak more slowly, please?",
    "Translate to German: I am allergic to peanuts.",
    "Translate to Portuguese: How much does this cost?",
]


def _chat(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def unique_rows() -> list[dict]:
    """Every distinct request once, tagged with task and category."""
    rows: list[dict] = []
    for q in QUESTIONS:
        rows.append({"task": "qa", "category": "chat", "messages": _chat(SYSTEM_QA, q)})
    for text in REWRITE_TEXTS:
        for instruction in REWRITE_INSTRUCTIONS:
            user = f"{instruction}\n\n{text}"
            rows.append(
                {"task": "rewrite", "category": "chat", "messages": _chat(SYSTEM_EDITOR, user)}
            )
    for passage in PASSAGES:
        rows.append(
            {"task": "summary", "category": "chat", "messages": _chat(SYSTEM_SUMMARY, passage)}
        )
    for ticket in TICKETS:
        rows.append(
            {
                "task": "classify",
                "category": "chat",
                "messages": _chat(SYSTEM_SUPPORT, ticket),
                "max_tokens": 4,
            }
        )
    for review in REVIEWS:
        prompt = f"{FEW_SHOT}Review: {review}\nSentiment:"
        rows.append({"task": "sentiment", "category": "plain", "prompt": prompt, "max_tokens": 3})
    for instruction in INSTRUCTIONS:
        rows.append({"task": "instruction", "category": "plain", "prompt": instruction})
    for translation in TRANSLATIONS:
        rows.append({"task": "translate", "category": "plain", "prompt": translation})
    return rows


def bad_rows() -> list[dict]:
    """One row of each kind of invalid input; each must come back with an error naming it."""
    return [
        {"task": "bad", "category": "null-prompt"},
        {"task": "bad", "category": "empty-prompt", "prompt": ""},
        {"task": "bad", "category": "blank-prompt", "prompt": "   \n"},
        {
            "task": "bad",
            "category": "missing-role",
            "messages": [{"role": None, "content": "Hi there"}],
        },
        {
            "task": "bad",
            "category": "missing-content",
            "messages": [
                {"role": "system", "content": SYSTEM_QA},
                {"role": "user", "content": None},
            ],
        },
        {"task": "bad", "category": "empty-messages", "messages": []},
        {
            "task": "bad",
            "category": "bad-max-tokens",
            "prompt": "Write a haiku about tea.",
            "max_tokens": 0,
        },
    ]


def build_rows(seed: int = 7) -> list[dict]:
    """Unique rows + ~25% exact duplicates + bad rows, shuffled, with ids."""
    rng = random.Random(seed)
    rows = unique_rows()
    duplicates = [dict(r) for r in rng.sample(rows, k=len(rows) // 3)]
    everything = rows + duplicates + bad_rows()
    rng.shuffle(everything)
    for i, row in enumerate(everything):
        row["id"] = f"sample-{i:04d}"
    return everything


SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("task", pa.string()),
        pa.field("category", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field(
            "messages",
            pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])),
        ),
        pa.field("max_tokens", pa.int32()),
    ]
)


def write_parquet(path: Path) -> int:
    rows = build_rows()
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, path, compression="zstd", row_group_size=128)
    return table.num_rows


def batch_lines() -> list[str]:
    """OpenAI Batch API request lines: chats, a duplicate pair, and two broken lines."""
    lines = []
    chats = [_chat(SYSTEM_QA, q) for q in QUESTIONS[:8]] + [
        _chat(SYSTEM_SUPPORT, t) for t in TICKETS[:8]
    ]
    chats += [[{"role": "user", "content": p}] for p in INSTRUCTIONS[:4]]
    chats += [chats[0], chats[9]]  # exact duplicates
    for i, messages in enumerate(chats):
        body = {"model": "smollm2", "messages": messages, "max_tokens": 8, "temperature": 0}
        lines.append(
            json.dumps(
                {
                    "custom_id": f"request-{i + 1}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    lines.insert(5, '{"custom_id": "request-broken", "method": "POST", "body": {"messages": [')
    lines.append(
        json.dumps({"custom_id": "request-nobody", "method": "POST", "url": "/v1/chat/completions"})
    )
    return lines


def main() -> None:
    num_rows = write_parquet(HERE / "prompts.parquet")
    lines = batch_lines()
    (HERE / "openai_batch.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {num_rows} rows to prompts.parquet and {len(lines)} lines to openai_batch.jsonl")


if __name__ == "__main__":
    main()
