"""The retrieval benchmark's 50 hand-written facts, each with the question a caller would ask
for it. The questions are worded the way people talk, not copied from the passage, so some
share few words with their answer (the case embeddings are for) and some hinge on one rare
name (the case BM25 is for). Every passage is put once into the generated documents
(corpus.py); the chunk that holds it is the one right answer to its question."""

from __future__ import annotations

# (question, passage)
FACTS: list[tuple[str, str]] = [
    (
        "How much does it cost to replace a parking badge I lost at the Riverside campus?",
        "A lost parking badge for the Riverside campus garage is replaced at the security office on level P1 for "
        "a fee of 15 dollars, paid by card only.",
    ),
    (
        "Can my dog come with me into the Harborview clinic?",
        "Only trained service animals are allowed inside the Harborview clinic; pets, including emotional support "
        "animals, must stay outside or in the car.",
    ),
    (
        "What time does the pharmacy at Northgate shut on Sundays?",
        "The Northgate outpatient pharmacy closes at 4 PM on Sundays and opens at 10 AM; on weekdays it stays open "
        "until 9 PM.",
    ),
    (
        "Is there somewhere to charge my electric car?",
        "Electric vehicle chargers are on the ground floor of the Riverside garage, bays 12 to 20, free for the "
        "first two hours with a validated ticket.",
    ),
    (
        "Who do I talk to about a mistake on my bill?",
        "Billing disputes are handled by the Patient Financial Services team, reachable at extension 4410 from 8 "
        "AM to 5 PM, Monday to Friday.",
    ),
    (
        "Do I need to stop eating before my colonoscopy, and when?",
        "Before a colonoscopy, patients switch to clear liquids the whole day before the procedure and take nothing "
        "by mouth after midnight.",
    ),
    (
        "How many people can visit someone in the maternity ward at once?",
        "The maternity ward allows two visitors at a bedside at one time, plus the birth partner, who may stay "
        "overnight.",
    ),
    (
        "Can I get my medical records sent to another doctor?",
        "To have records transferred to another provider, sign the HX-20 release form at any front desk or in the "
        "patient portal; transfers take up to ten business days.",
    ),
    (
        "Is the cafeteria at Westbrook open at night?",
        "The Westbrook cafeteria, called the Pelican Room, serves hot food from 6 AM to 8 PM and has vending "
        "machines and a coffee kiosk open around the clock.",
    ),
    (
        "Do you have interpreters for people who speak Vietnamese?",
        "Free medical interpreters are available in Vietnamese, Spanish, Mandarin and Arabic; ask the front desk a "
        "day ahead, or use the video interpreter tablets at any time.",
    ),
    (
        "How early should I show up for an MRI?",
        "For an MRI, arrive 45 minutes before the scan to change, complete the metal safety questionnaire and have "
        "an IV placed if contrast is ordered.",
    ),
    (
        "My kid needs a sports physical, do you do those on weekends?",
        "Sports physicals for children are offered on Saturday mornings at the Northgate pediatric clinic, walk-in, "
        "for a flat 40 dollars.",
    ),
    (
        "Where do I go to give blood?",
        "The blood donation center is in the Riverside campus lobby next to the gift shop; donors must weigh at "
        "least 110 pounds and bring a photo ID.",
    ),
    (
        "Can someone drive me home after sedation or can I take a taxi?",
        "After sedation a responsible adult must drive you home; a taxi or rideshare alone is not allowed, and the "
        "procedure is cancelled if no escort is present.",
    ),
    (
        "How long do I keep the heart monitor on?",
        "The Holter heart monitor is worn for 48 hours, including while sleeping, and returned in the prepaid box "
        "or to the cardiology desk.",
    ),
    (
        "Is the Harborview urgent care open on Christmas Day?",
        "Harborview urgent care is open every day of the year including Christmas and New Year's Day, with "
        "shortened hours of 9 AM to 3 PM on those two holidays.",
    ),
    (
        "What's the wifi password for patients?",
        "Guests join the network called HCH-Guest; no password is needed, you only accept the terms on the welcome "
        "page.",
    ),
    (
        "Do you validate parking for people visiting the cancer center?",
        "Parking for cancer center patients and one companion is validated at the infusion reception, so the stay "
        "is free however long it lasts.",
    ),
    (
        "Can I bring my own food for my mother who is admitted?",
        "Food from home may be brought for admitted patients unless a nurse has posted a diet order on the door; "
        "label it with the patient's name and date.",
    ),
    (
        "How do I get a copy of my x-ray images on a disc?",
        "Imaging copies on CD are made by the radiology film library on the second floor of Westbrook, ready the "
        "next business day, free for patients.",
    ),
    (
        "What's the number for the nurse advice line?",
        "The 24-hour nurse advice line is 555 0199; a registered nurse answers and can tell you whether to come in "
        "or care for yourself at home.",
    ),
    (
        "Are flu shots free?",
        "Seasonal flu shots cost nothing for anyone with insurance and 25 dollars for the uninsured, given at every "
        "pharmacy without an appointment.",
    ),
    (
        "Can I pay my bill over the phone?",
        "Payments by phone go through the automated line at 555 0150, open day and night, which accepts credit "
        "cards and checking account numbers.",
    ),
    (
        "How soon will I get my lab results?",
        "Most lab results appear in the patient portal within 48 hours; biopsies and genetic tests take up to two "
        "weeks, and your doctor calls about anything urgent.",
    ),
    (
        "Is there a shuttle from the train station?",
        "A free shuttle runs from Central Station to the Riverside campus every 20 minutes between 6 AM and 10 PM, "
        "leaving from the stop on Dock Street.",
    ),
    (
        "Do I have to wear a mask when I visit?",
        "Masks are required only in the transplant unit and the neonatal intensive care unit; elsewhere they are "
        "optional but offered at every entrance.",
    ),
    (
        "What happens if I miss my appointment without calling?",
        "A missed appointment without 24 hours notice is charged a 50 dollar no-show fee; after three no-shows in a "
        "year a clinic may ask you to book elsewhere.",
    ),
    (
        "Where can I get my prescription glasses fixed?",
        "The optical shop at Northgate repairs frames and replaces lenses while you wait; small repairs like screws "
        "and nose pads are free.",
    ),
    (
        "Who is the head of the orthopedic department?",
        "Doctor Amara Okafor leads the orthopedic department and sees knee and hip replacement patients at "
        "Westbrook on Tuesdays and Thursdays.",
    ),
    (
        "Can I smoke anywhere on the campus?",
        "All campuses are smoke-free and vape-free, including parking garages and sidewalks; nicotine patches are "
        "available to patients on request.",
    ),
    (
        "What should I bring to my first appointment?",
        "For a first visit bring a photo ID, your insurance card, a list of current medicines with doses, and the "
        "name of your previous doctor.",
    ),
    (
        "Does the hospital have a chapel or somewhere quiet to pray?",
        "An interfaith chapel on the first floor of Riverside is open at all hours, and chaplains of several faiths "
        "can be paged through the operator.",
    ),
    (
        "How do I sign up for the online portal?",
        "To activate the patient portal, use the eight-letter code printed on your visit summary at "
        "portal.harborcityhealth.example; the code expires after 30 days.",
    ),
    (
        "Can my teenager see a doctor without me?",
        "Patients aged 16 and 17 may book and attend visits alone; a parent must still sign consent for surgery and "
        "most vaccines.",
    ),
    (
        "Is there a place to stay overnight near the children's hospital for families?",
        "The Lighthouse Family House across from the children's hospital offers rooms to families of young "
        "patients for 20 dollars a night, with meals included.",
    ),
    (
        "How much is a physical therapy session if I pay myself?",
        "A physical therapy session paid out of pocket costs 95 dollars for 45 minutes; a package of ten sessions "
        "is 850 dollars.",
    ),
    (
        "Where do I drop off a stool sample?",
        "Stool and urine samples are dropped at the lab window on the ground floor of Harborview, open 7 AM to 6 "
        "PM; samples must arrive within two hours.",
    ),
    (
        "Can I get a COVID test before travelling abroad?",
        "Travel PCR tests with a signed certificate are done at the Northgate travel clinic by appointment, results "
        "within 24 hours, for 120 dollars.",
    ),
    (
        "Do you offer payment plans for big bills?",
        "Balances over 500 dollars can be split into interest-free monthly payments for up to 24 months; ask "
        "Patient Financial Services to set it up.",
    ),
    (
        "Is there a wheelchair I can borrow when I arrive?",
        "Wheelchairs are free to borrow at every main entrance; a volunteer can push the chair for you if you ask "
        "at the information desk.",
    ),
    (
        "How do I complain about how I was treated?",
        "Complaints and compliments go to the Patient Advocate office, by phone at extension 2200 or in writing; "
        "every complaint gets an answer within 14 days.",
    ),
    (
        "What's the minimum age to volunteer at the hospital?",
        "Volunteers must be at least 15 years old; volunteers under 18 need a parent's signature and serve only in "
        "the gift shop, library cart and front lobby.",
    ),
    (
        "Is the sleep lab study done overnight?",
        "A sleep study at the Westbrook sleep lab starts at 8 PM and ends at 6 AM; bring pajamas, and you sleep in "
        "a private room with a camera.",
    ),
    (
        "Can I get my ears cleaned out at the clinic?",
        "Earwax removal is done by the nurses of the ENT clinic in ten-minute visits, booked online; do not use "
        "drops for two days before.",
    ),
    (
        "Do you take walk-ins for stitches?",
        "Cuts needing stitches are treated without an appointment at all three urgent cares; the average wait is "
        "under an hour.",
    ),
    (
        "Where do I park a motorcycle?",
        "Motorcycles park for free in the marked area beside the Westbrook bicycle racks; they are not allowed in "
        "the garage.",
    ),
    (
        "How do I return a crutch I borrowed?",
        "Borrowed crutches, walkers and boots go back to the equipment loan desk in Riverside's basement, or to any "
        "front desk, with no deposit to collect.",
    ),
    (
        "Do new moms get help with breastfeeding?",
        "Lactation consultants visit every new mother on the maternity ward, and a free breastfeeding support group "
        "meets on Wednesdays at 10 AM.",
    ),
    (
        "Who can give me a letter for my employer about my sick days?",
        "Work notes and fitness-for-duty letters are written by the treating doctor; request them in the portal, "
        "and allow three business days.",
    ),
    (
        "How late can I call to cancel a surgery?",
        "A scheduled surgery can be cancelled without charge up to 72 hours before; later cancellations must be "
        "made by phone to the surgical scheduling office.",
    ),
]

assert len(FACTS) == 50
