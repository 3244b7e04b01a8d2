"""The benchmark's documents: a fictional hospital network's handbook, generated page by page
from templates by a seeded random generator (the same pages on every run), with the 50
hand-written facts (facts.py) put into the first 200 pages, one fact to a page.

The filler is deliberately near the facts: the same campuses, departments, parking, visiting
hours, fees and preparations, with other numbers, so a retriever has to tell "parking at
Riverside" from the other twenty parking paragraphs. No filler sentence answers a question.

A page is at least 500 words (whitespace-separated tokens of its Markdown, heading included):
a page gets template paragraphs until it reaches 500.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from voxline.bench.retrieval.facts import FACTS

WORDS_PER_PAGE = 500
FIRST_FACT_PAGE, FACT_STRIDE = 2, 4  # facts on pages 2, 6, ..., 198: all inside the 200-page set

CAMPUSES = ["Riverside", "Harborview", "Northgate", "Westbrook", "Eastlake", "Southport", "Millbrook", "Oakridge"]
DEPARTMENTS = [
    "cardiology", "dermatology", "oncology", "neurology", "radiology", "gastroenterology", "endocrinology",
    "urology", "rheumatology", "audiology", "nephrology", "pulmonology", "ophthalmology", "psychiatry",
    "podiatry", "allergy and immunology", "geriatrics", "vascular surgery", "infectious disease", "hematology",
]  # fmt: skip
TESTS = [
    "echocardiogram", "skin biopsy", "EEG", "bone density scan", "allergy patch test", "hearing test",
    "cardiac stress test", "spirometry", "CT scan", "abdominal ultrasound", "nerve conduction study", "mammogram",
]  # fmt: skip
CONDITIONS = [
    "diabetes", "heart failure", "asthma", "chronic kidney disease", "migraine", "arthritis", "psoriasis",
    "COPD", "high blood pressure", "thyroid disease", "multiple sclerosis", "anemia", "long COVID",
]  # fmt: skip
NAMES = ["Jordan Reyes", "Priya Nair", "Tomasz Kowal", "Grace Lindqvist", "Samuel Ortiz", "Mei Tanaka", "Ali Haddad"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
COLORS = ["blue", "green", "orange", "yellow", "purple", "red"]

TEMPLATES = [
    "Patients arriving for {dept} at {campus} check in at the {color} desk on floor {n}. The receptionist confirms "
    "the appointment, scans the insurance card and prints a wristband with your name and date of birth. If you "
    "arrive more than {m} minutes late, the team will try to fit you in but may ask you to choose another time. "
    "Please silence phones in the waiting area and tell the desk if you need a quiet room or help with forms.",
    "The {dept} clinic at {campus} sees patients from Monday to {day} between {h1} AM and {h2} PM, and its phone "
    "line opens half an hour before the first appointment. Messages left after hours are returned the next "
    "working day. During school holidays the clinic runs a reduced timetable, and the current week's timetable "
    "is always posted on the door of the waiting room and in the patient portal.",
    "Most insurance plans ask for a referral from a primary care doctor before a first {dept} appointment at "
    "{campus}. The referral is sent electronically by your doctor's office; you do not need to carry a paper copy. "
    "If your plan does not need one, you can book directly. Referrals usually remain valid for {n} months, after "
    "which your doctor will need to renew them before further visits are booked.",
    "The {dept} team at {campus} includes {n} physicians, {m} nurse practitioners and a care coordinator, "
    "{name}, who helps patients plan tests and follow-up visits. The team meets every {day} to review complex "
    "cases together with colleagues from other specialties, so that a patient with several conditions gets one "
    "agreed plan rather than several separate ones.",
    "Before a {test}, {dept} asks patients to wear comfortable clothing without metal fasteners and to leave "
    "jewellery at home. Most people can eat and drink normally and take their usual medicines unless the letter "
    "says otherwise. The test itself takes about {m} minutes, and a specialist reviews the results within {n} "
    "working days before they are released to the portal.",
    "{campus} takes part in clinical research on {condition}. Patients who may qualify for a study are told by "
    "their {dept} doctor; taking part is always voluntary and never affects the care you receive. Study visits "
    "are scheduled around your regular appointments, and travel costs for study visits are reimbursed.",
    "A free education class on living with {condition} meets at {campus} every {day} at {h1} PM in conference "
    "room {n}. Nurses and dietitians from {dept} lead the sessions, which cover medicines, daily routines and "
    "warning signs. Family members are welcome, no registration is needed, and handouts are available in large "
    "print.",
    "Many {dept} follow-up visits can be done by video. You receive a link by text message fifteen minutes "
    "before the visit; open it on a phone or computer with a camera, in a quiet place with good light. If the "
    "connection fails, the doctor will phone you instead. Video visits are billed the same way as visits in "
    "person.",
    "The {campus} campus is served by city bus lines {n} and {m}, which stop at the main entrance. Drop-off is "
    "allowed for up to ten minutes in the circle in front of the {color} tower, and taxis wait at the same "
    "place. Visitors with limited mobility can ask the entrance staff for help getting from the car to the "
    "{dept} clinic.",
    "Visitors to {campus} park in lot {letter}, which is open day and night. The first thirty minutes are free "
    "and the daily maximum is {n} dollars; pay at the machines near the exits with coins or a card. Spaces for "
    "drivers with a disability are closest to the {color} tower entrance, and height limits are marked at the "
    "entry barrier.",
    "Visiting hours on the {dept} ward at {campus} run from {h1} AM to {h2} PM. Children under twelve visit "
    "with an adult, and visitors with a cold or fever are asked to stay away. Flowers are not allowed on the "
    "ward, but cards and balloons are. Ward staff may ask visitors to step out during rounds and procedures.",
    "The {dept} unit at {campus} opened in {year} and moved to its current wing after a renovation that added "
    "{n} exam rooms and a larger waiting area. It is known in the region for its work on {condition}, and it "
    "trains residents and nursing students throughout the year under supervision.",
    "During a typical {dept} visit at {campus} a nurse first records your weight, blood pressure and current "
    "medicines. The doctor then reviews your history, examines you and explains the plan. At the end you "
    "receive a printed visit summary, and any new prescriptions are sent straight to the pharmacy you chose.",
    "New patients currently wait about {n} weeks for a routine {dept} appointment at {campus}; urgent "
    "referrals are seen within {m} days. If you are on the waiting list and your symptoms get worse, call your "
    "primary care doctor, who can ask for the referral to be moved up. Cancellations are offered to people "
    "on the list by text message.",
    "The {dept} suite at {campus} has its own {test} equipment, so most tests happen on the day of the "
    "consultation. The equipment is replaced every {n} years and checked every morning before the first "
    "patient. Results are discussed with you before you leave when possible, or at a short phone call later.",
    "A support group for people with {condition} and their families meets at {campus} on the first {day} of "
    "each month at {h1} PM. It is led by a social worker from {dept} and a volunteer who lives with the "
    "condition. Meetings last about an hour, are confidential, and light refreshments are provided.",
    "Charges for {dept} services at {campus} appear on one combined statement each month. Statements list every "
    "visit, test and supply, what your insurer paid and what remains for you. Statements are mailed, and they "
    "are also shown in the patient portal, where you can download them as PDF files for your records.",
    "Hand hygiene stations stand at the door of every {dept} room at {campus}. Staff clean their hands before "
    "and after touching a patient, and patients and visitors are asked to do the same. It is fine to ask anyone "
    "caring for you whether they have cleaned their hands; staff are trained to welcome the question.",
]


@dataclass(frozen=True)
class Page:
    number: int
    markdown: str
    fact: int | None  # which FACTS entry this page carries, if any

    @property
    def words(self) -> int:
        return len(self.markdown.split())


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        dept=rng.choice(DEPARTMENTS), campus=rng.choice(CAMPUSES), color=rng.choice(COLORS), test=rng.choice(TESTS),
        condition=rng.choice(CONDITIONS), name=rng.choice(NAMES), day=rng.choice(DAYS), n=rng.randint(2, 12),
        m=rng.randint(10, 40), h1=rng.randint(7, 10), h2=rng.randint(4, 8), year=rng.randint(1978, 2021),
        letter=rng.choice("ABCDEFG"),
    )  # fmt: skip


def page(number: int, seed: int = 13) -> Page:
    """Page `number`, the same on every run: a heading naming a department and a campus, and
    template paragraphs (and the page's fact, if it has one) until WORDS_PER_PAGE words."""
    rng = random.Random(f"{seed}:{number}")
    heading = f"# {rng.choice(DEPARTMENTS).capitalize()} at {rng.choice(CAMPUSES)}, part {number}"
    paragraphs: list[str] = []
    words = len(heading.split())
    while words < WORDS_PER_PAGE:
        paragraphs.append(_fill(rng.choice(TEMPLATES), rng))
        words += len(paragraphs[-1].split())
    fact: int | None = None
    if number >= FIRST_FACT_PAGE and (number - FIRST_FACT_PAGE) % FACT_STRIDE == 0:
        fact = (number - FIRST_FACT_PAGE) // FACT_STRIDE
        fact = fact if fact < len(FACTS) else None
    if fact is not None:
        paragraphs.insert(rng.randrange(len(paragraphs) + 1), FACTS[fact][1])
    return Page(number, "\n\n".join([heading, *paragraphs]) + "\n", fact)


def pages(count: int) -> list[Page]:
    return [page(n) for n in range(count)]
