"""The story generator behind the three story tasks: a protagonist travels from chapter to chapter, meets one
character per chapter, buys exactly one unique item per chapter and sometimes sells an older one.

The structure follows The Sparse Frontier's `sparse_frontier/tasks/story/narrative.py` (PiotrNawrot/sparse-frontier,
commit 31d86c1): every chapter has a (location, character) pair used by no other chapter (64 locations x 49
characters), a random event, three scene sentences (arrival, reason, event), a character introduction,
`conversation_extensions` distinct conversation sentences, one purchase of an item never seen before
("adjective material type", 18 x 15 x 21 combinations), with probability 0.5 the sale of an older inventory item,
a farewell, a conclusion and one extra sentence, rendered as "Chapter {id}:\\n" + the sentences. The word lists and
sentence templates here are sparsebench's own (same sizes as upstream's lists, different words and wording).

Chapters come from one RNG in order, so chapter i does not depend on how many chapters follow it: the task fitting
a prompt to a length takes the first n chapters of one endless narrative.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

LOCATIONS = (
    "Athens", "Sparta", "Corinth", "Argos", "Delphi", "Olympia", "Miletus", "Ephesus", "Smyrna", "Pergamon",
    "Sardis", "Halicarnassus", "Knossos", "Phaistos", "Mycenae", "Tiryns", "Pylos", "Syracuse", "Akragas", "Selinus",
    "Taras", "Neapolis", "Cumae", "Capua", "Rome", "Ostia", "Carthage", "Utica", "Cyrene", "Alexandria", "Memphis",
    "Thebes", "Heliopolis", "Naukratis", "Byblos", "Tyre", "Sidon", "Ugarit", "Damascus", "Palmyra", "Antioch",
    "Babylon", "Nineveh", "Assur", "Uruk", "Susa", "Persepolis", "Ecbatana", "Gordion", "Hattusa", "Troy",
    "Byzantium", "Chalcedon", "Sinope", "Trapezus", "Olbia", "Massalia", "Gades", "Tarraco", "Numantia", "Lugdunum",
    "Aquileia", "Ravenna", "Petra",
)
CHARACTERS = (
    "Aelia", "Alkimos", "Anaxis", "Berenike", "Brasidas", "Chloris", "Damaris", "Demeas", "Dion", "Doris", "Erastos",
    "Eudora", "Galene", "Glaukos", "Hagnon", "Helike", "Hipparchos", "Ione", "Isandros", "Kleitos", "Korinna",
    "Lampon", "Lykos", "Maia", "Melissa", "Menon", "Myron", "Nausikaa", "Nikias", "Olympias", "Pamphilos", "Phaidon",
    "Philon", "Polyxena", "Praxilla", "Rhodope", "Sappho", "Sosias", "Telesilla", "Theano", "Thrasyllos", "Timaia",
    "Xenia", "Zenobia", "Zopyros", "Kallias", "Ariston", "Eirene", "Lysias",
)
ITEM_ADJECTIVES = (
    "carved", "painted", "fluted", "burnished", "gleaming", "tarnished", "slender", "heavy", "jeweled", "plain",
    "rustic", "royal", "sacred", "hollow", "twisted", "inlaid", "faded", "curious",
)
ITEM_MATERIALS = (
    "bronze", "silver", "gold", "iron", "ivory", "jade", "cedar", "ebony", "glass", "alabaster", "garnet", "onyx",
    "coral", "pewter", "terracotta",
)
ITEM_TYPES = (
    "bowl", "cup", "dagger", "brooch", "bracelet", "lyre", "flute", "mirror", "lamp", "box", "coin", "crown",
    "figurine", "helmet", "jar", "key", "ring", "chest", "spear", "tablet", "urn",
)
EVENTS = (
    "a sudden storm", "a harvest festival", "a chariot race", "a temple procession", "a fire in the market",
    "the arrival of a royal envoy", "a dispute between rival guilds", "a lunar eclipse", "a public trial",
    "a wedding celebration", "a shortage of grain", "a theatre performance", "a flood along the river",
    "the funeral of a magistrate", "a small earthquake", "a visit by foreign traders",
)

# Sentence templates: {p} protagonist, {loc} location, {c} character, {event}, {item} (with its article).
SCENE_INTROS = (
    "{p} arrived in {loc} as the morning markets were opening.",
    "Late in the afternoon, {p} walked through the gates of {loc}.",
    "{p} reached {loc} after many days on the road.",
    "Under a grey sky, {p} entered the busy streets of {loc}.",
    "By ship, {p} came to the harbour of {loc} at first light.",
    "{p} rode into {loc} just before the evening bells.",
    "The road brought {p} at last to the walls of {loc}.",
    "{p} stepped into {loc}, tired but curious about the city.",
)
REASONS = (
    "{p} had come to {loc} looking for old records of the region.",
    "Word of rare goods had drawn {p} to {loc}.",
    "{p} hoped that someone in {loc} could answer a long-standing question.",
    "A letter from a friend had asked {p} to visit {loc}.",
    "{p} wanted to rest in {loc} before continuing the journey.",
    "Stories about the scholars of {loc} had brought {p} there.",
    "{p} planned to trade in {loc} and learn what news the city held.",
    "An old map in {p}'s bag marked {loc} as a place worth seeing.",
)
EVENT_SENTENCES = (
    "That day the city was busy with {event}.",
    "Soon after, {event} drew crowds into the squares.",
    "Everyone in {loc} was talking about {event}.",
    "The streets were full of talk about {event}.",
    "Not long after, {event} interrupted the usual routine.",
    "{p} arrived just in time to witness {event}.",
    "The people of {loc} were still recovering from {event}.",
    "News of {event} spread quickly through the streets.",
)
CHARACTER_INTROS = (
    "In a quiet square, {p} met {c}, a local merchant.",
    "{c}, who kept a small stall near the temple, greeted {p} warmly.",
    "{p} was introduced to {c} by an innkeeper.",
    "At a crowded tavern, {p} shared a table with {c}.",
    "{c} noticed {p} studying the market and came over to talk.",
    "Near the fountain, {p} struck up a conversation with {c}.",
    "{p} found {c} repairing a cart at the side of the road.",
    "A servant led {p} to the house of {c}.",
)
CONVERSATIONS = (
    "They spoke about the prices of bread and oil in {loc}.",
    "The two compared stories of long journeys and strange places.",
    "They discussed which roads were safe to travel this season.",
    "Their talk turned to old legends told about {loc}.",
    "They argued good-naturedly about the best wine of the region.",
    "The conversation drifted to the politics of the city council.",
    "They shared news of distant wars and far-off kings.",
    "For a time they spoke about music and the festivals of the year.",
    "They exchanged advice on finding honest guides in {loc}.",
    "The two laughed about the mishaps of careless travellers.",
    "They talked about the ships that had recently come into port.",
    "Their words turned to the craftsmen whose work filled the markets.",
    "They wondered aloud how long the good times in {loc} would last.",
    "{p} asked about the history of the old walls and heard a long tale.",
    "They spoke quietly about rumours of thieves on the hill roads.",
    "The two discussed the teachings of a famous philosopher.",
    "They compared the customs of {loc} with those of other cities.",
    "Their conversation touched on families, friends and old debts.",
    "They talked about the harvest and the price of grain.",
    "For a while they simply watched the crowd and traded remarks about it.",
)
PURCHASES = (
    "{p} bought {item} from {c} after some friendly bargaining.",
    "After a long haggle, {p} purchased {item} from {c}.",
    "{p} paid {c} a fair price for {item}.",
    "{p} acquired {item} from {c}, pleased with the deal.",
    "Before leaving, {p} bought {item} that {c} had on offer.",
    "{p} handed {c} a few coins and took home {item}.",
    "{c} agreed to part with {item}, and {p} paid for it gladly.",
    "From {c}, {p} obtained {item} in exchange for a purse of silver.",
)
SALES = (
    "{p} sold {item} to {c}.",
    "{c} bought {item} from {p} for a good price.",
    "{p} parted with {item}, selling it to {c}.",
    "Before the day was over, {p} sold {item} to {c}.",
    "{c} paid {p} well for {item}.",
    "{p} let {c} have {item} in exchange for a purse of coins.",
)
FAREWELLS = (
    "{p} thanked {c} and said goodbye.",
    "With a warm handshake, {p} took leave of {c}.",
    "{p} and {c} parted as friends.",
    "{c} wished {p} a safe journey.",
    "{p} bid farewell to {c} at the edge of the square.",
    "Promising to write, {p} left {c}.",
    "{p} waved to {c} and went on.",
    "{c} walked {p} to the corner before they parted.",
)
CONCLUSIONS = (
    "{p} left {loc} the next morning.",
    "As night fell, {p} thought about the day spent in {loc}.",
    "{p} wrote a few lines about {loc} in a travel journal.",
    "The visit to {loc} gave {p} much to think about.",
    "{p} slept well that night, glad to have come to {loc}.",
    "Leaving {loc} behind, {p} set off toward the next destination.",
    "{p} would remember {loc} for a long time.",
    "When the stay in {loc} was over, {p} packed and moved on.",
)
EXTRAS = (
    "A cool wind blew in from the sea.",
    "Somewhere a dog barked in the distance.",
    "The smell of fresh bread drifted through the air.",
    "Swallows circled above the rooftops.",
    "The lamps of the city flickered on one by one.",
    "Rain clouds gathered over the hills.",
    "A group of children ran past, laughing.",
    "The sound of a distant flute carried over the walls.",
)


def with_article(item: str) -> str:
    return ("an " if item[0] in "aeiou" else "a ") + item


@dataclass
class Chapter:
    """One chapter: its facts and its sentences in order (`purchase` is the index of the purchase sentence)."""

    chapter_id: int
    location: str
    character: str
    event: str
    bought: str
    sold: str | None
    sentences: list[str] = field(default_factory=list)
    purchase: int = -1

    def text(self, without_purchase: bool = False) -> str:
        kept = [s for j, s in enumerate(self.sentences) if not (without_purchase and j == self.purchase)]
        return f"Chapter {self.chapter_id}:\n" + " ".join(kept)


class Narrative:
    """An endless narrative drawn from one RNG; `chapters(n)` returns the first n chapters (generated on demand)."""

    def __init__(self, rng: random.Random, protagonist: str = "Arion", conversation_extensions: int = 3):
        if not 0 <= conversation_extensions <= len(CONVERSATIONS):
            raise ValueError(f"conversation_extensions={conversation_extensions} must be in "
                             f"[0, {len(CONVERSATIONS)}]")
        self.rng = rng
        self.protagonist = protagonist
        self.conversation_extensions = conversation_extensions
        self._chapters: list[Chapter] = []
        self._pairs: set[tuple[str, str]] = set()
        self._items: set[str] = set()
        self._inventory: list[str] = []

    def chapters(self, n: int) -> list[Chapter]:
        max_chapters = len(LOCATIONS) * len(CHARACTERS)
        if n > max_chapters:
            raise ValueError(f"a narrative has at most {max_chapters} chapters (one per location-character pair)")
        while len(self._chapters) < n:
            self._chapters.append(self._next())
        return self._chapters[:n]

    def _pair(self) -> tuple[str, str]:
        for _ in range(100):
            pair = (self.rng.choice(LOCATIONS), self.rng.choice(CHARACTERS))
            if pair not in self._pairs:
                break
        else:  # nearly every pair used: pick among the free ones
            pair = self.rng.choice(sorted({(loc, c) for loc in LOCATIONS for c in CHARACTERS} - self._pairs))
        self._pairs.add(pair)
        return pair

    def _item(self) -> str:
        while True:
            item = (f"{self.rng.choice(ITEM_ADJECTIVES)} {self.rng.choice(ITEM_MATERIALS)} "
                    f"{self.rng.choice(ITEM_TYPES)}")
            if item not in self._items:
                self._items.add(item)
                return item

    def _next(self) -> Chapter:
        rng, p = self.rng, self.protagonist
        loc, c = self._pair()
        event = rng.choice(EVENTS)
        fill = {"p": p, "loc": loc, "c": c, "event": event}
        sentences = [rng.choice(t).format(**fill) for t in (SCENE_INTROS, REASONS, EVENT_SENTENCES,
                                                            CHARACTER_INTROS)]
        sentences += [t.format(**fill) for t in rng.sample(CONVERSATIONS, self.conversation_extensions)]
        if len(self._items) >= len(ITEM_ADJECTIVES) * len(ITEM_MATERIALS) * len(ITEM_TYPES):
            raise ValueError("the narrative ran out of unique items")
        bought = self._item()
        self._inventory.append(bought)
        purchase = len(sentences)
        sentences.append(rng.choice(PURCHASES).format(item=with_article(bought), **fill))
        sold = None
        older = self._inventory[:-1]
        if older and rng.random() < 0.5:
            sold = rng.choice(older)
            self._inventory.remove(sold)
            sentences.append(rng.choice(SALES).format(item=f"the {sold}", **fill))
        sentences += [rng.choice(t).format(**fill) for t in (FAREWELLS, CONCLUSIONS, EXTRAS)]
        return Chapter(len(self._chapters) + 1, loc, c, event, bought, sold, sentences, purchase)
