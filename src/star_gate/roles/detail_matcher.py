"""Which missing details of an IN3 task does a clarifying question ask about? A lexical matcher.

It backs the `details` roleplayer and reward: the simulated user tells the fact of each detail
the question asks about, and says it has no preference when it asks about none. It must be strict:
a question about something else must recover nothing, or asking anything would pay.

A detail is represented by the word stems of its description and of its options only, never by
its `inquiry`: the inquiries are the examples the threshold is calibrated on
(benchmarks/in3_matcher.py), and matching on them would make that measurement trivial.

A detail's score (0 to 1) is the geometric mean of three shares of the IDF mass the question and
the detail have in common (options count for `option_weight` of a description word):

- description coverage: how much of the description the question mentions;
- question share: how much of the question points at this detail rather than at the task's other
  details (question words no detail of the task uses count for `outside_weight` only);
- evidence: how much was matched at all, m / (m + `evidence_half`), so that one shared generic
  word is not enough.

A question is scored as a whole and by its sentences and clauses ("..., and how long ..."), and
each detail keeps its best score: as a whole, a question that asks for two details explains each
of them only half.

A word shared by several details of the task ("trip" in "Duration of the trip" and "Budget for
the trip") is divided between them: it tells them apart no better than it tells them from nothing.
A few question phrases add the words a description uses for what they ask ("how long" adds
"duration"), since questions and descriptions rarely share those.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from star_gate.data.in3 import is_held_out

__all__ = [
    "CALIBRATED_THRESHOLD",
    "DetailMatcher",
    "content_stems",
    "count_document_frequencies",
    "format_frequency_table",
    "is_held_out",
    "question_parts",
    "question_stems",
    "stem",
]

# Set by benchmarks/in3_matcher.py: the best F1 on the calibration tasks (4 in 5 of the IN3
# training file) with precision >= 0.92 and at most 2% of off-topic questions matching anything.
# Calibration: precision 0.924, recall 0.861, own detail on top 0.930, off-topic matches 1.4%.
# Held-out fifth: precision 0.919, recall 0.845, own detail on top 0.911, off-topic matches 1.6%;
# two of its inquiries joined into one question: both details matched 71% of the time.
CALIBRATED_THRESHOLD = 0.65

OPTION_WEIGHT = 0.5  # an option word says less about what a detail is than a description word
OUTSIDE_WEIGHT = 0.25  # question words no detail of the task uses: task topic, or off topic
OTHER_WEIGHT = 1.0  # question words of the task's other details: they count fully against this one
EVIDENCE_HALF = 2.0  # matched IDF mass at which the evidence share is one half
STEM_LENGTH = 5  # stems are cut here: "restrictions"/"restricted", "activities"/"activity" meet

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.?!;])\s+")
_CLAUSE_BREAK = re.compile(
    r"[.?!;]\s+|,?\s+(?:and|also|plus)\s+(?=(?:how|what|when|where|which|who|whom|why|do|does|did"
    r"|are|is|was|were|would|will|can|could|should|have|has|any|if)\b)",
    re.IGNORECASE,
)  # a new sentence, or "and" before a new question
_SUFFIXES = (
    "ations", "ation", "ings", "ing", "ities", "ity", "ies", "ied", "ness", "ments", "ment",
    "ers", "er", "ed", "es", "ly", "s",
)  # fmt: skip
_STOP_TEXT = """
    a an the and or of to in on for with by at from as is are was were be been being do does did
    doing you your yours i me my we our us it its this that these those there here what which who
    whom whose when where why how would could should can will shall may might must have has had
    having any some all each every no not yes like want wish please tell know let specify provide
    share describe give mention about into than then so if also just more most much many other such
    only own same too very don prefer preferred preference preferences specific particular user
    users kind kinds type types sort looking plan planning need needs needed eg etc
"""  # question and description boilerplate; "user" is how descriptions say "you"
_STOP_WORDS = frozenset(_STOP_TEXT.split())
_QUESTION_CUES = (
    ("how long", "duration length time"),
    ("how much", "amount budget cost price spend"),
    ("how many", "number count size"),
    ("how often", "frequency"),
    ("how old", "age"),
    ("how recent", "time recent date"),
    ("how soon", "deadline time urgency turnaround"),
    ("how quickly", "deadline time urgency turnaround speed"),
    ("how far", "distance"),
    ("by when", "deadline time"),
    ("what time", "time"),
    ("when", "date time timing deadline schedule"),
    ("where", "location place area"),
)  # what a question phrase asks for, in the words descriptions use for it


def stem(word: str) -> str:
    """A crude stem: one common suffix off, then cut to STEM_LENGTH, so inflections meet."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:STEM_LENGTH]


@lru_cache(maxsize=65536)
def content_stems(text: str) -> frozenset[str]:
    """The stems of a text's content words (stop words and single letters dropped)."""
    words = _WORD.findall(text.lower())
    return frozenset(stem(w) for w in words if len(w) > 1 and w not in _STOP_WORDS)


@lru_cache(maxsize=65536)
def question_stems(question: str) -> frozenset[str]:
    """A question's content stems, plus the description words its question phrases stand for."""
    stems = set(content_stems(question))
    spaced = f" {' '.join(_WORD.findall(question.lower()))} "
    for phrase, words in _QUESTION_CUES:
        if f" {phrase} " in spaced:
            stems |= content_stems(words)
    return frozenset(stems)


@lru_cache(maxsize=65536)
def question_parts(question: str) -> tuple[str, ...]:
    """The question, then its sentences and clauses when it has several."""
    pieces = (*_SENTENCE_END.split(question), *_CLAUSE_BREAK.split(question))
    parts = [question.strip()]
    for piece in (p.strip(" .?!;,") for p in pieces):
        if _WORD.search(piece) and piece not in parts:
            parts.append(piece)
    return tuple(parts)


def _detail_stems(detail) -> tuple[frozenset[str], frozenset[str]]:
    """(description stems, option stems not already in the description); never the inquiry."""
    described = content_stems(detail.description)
    options = content_stems(" ".join(detail.options)) - described
    return described, options


def count_document_frequencies(details: Iterable) -> tuple[Counter, int]:
    """In how many details each stem occurs (description and options), and how many details."""
    frequencies: Counter = Counter()
    count = 0
    for detail in details:
        described, options = _detail_stems(detail)
        frequencies.update(described | options)
        count += 1
    return frequencies, count


def format_frequency_table(frequencies: Mapping[str, int], min_count: int) -> str:
    """The frequencies of stems seen at least min_count times, as "stem:count" words (shippable)."""
    kept = sorted((s, n) for s, n in frequencies.items() if n >= min_count)
    return " ".join(f"{s}:{n}" for s, n in kept)


def _parse_frequency_table(table: str) -> dict[str, int]:
    pairs = (item.rsplit(":", 1) for item in table.split())
    return {s: int(n) for s, n in pairs}


class DetailMatcher:
    """Scores a question against a task's missing details; `asked` keeps those at the threshold.

    By default the document frequencies are the ones shipped below, counted on the calibration
    tasks; the calibration script passes its own to measure a design before it is shipped.
    """

    def __init__(
        self,
        threshold: float = CALIBRATED_THRESHOLD,
        *,
        document_frequencies: Mapping[str, int] | None = None,
        document_count: int | None = None,
        option_weight: float = OPTION_WEIGHT,
        outside_weight: float = OUTSIDE_WEIGHT,
        other_weight: float = OTHER_WEIGHT,
        evidence_half: float = EVIDENCE_HALF,
        question_cues: bool = True,
        share_words: bool = True,
        split_parts: bool = True,
    ):
        if document_frequencies is None:
            document_frequencies = _parse_frequency_table(CALIBRATION_FREQUENCIES)
            document_count = CALIBRATION_DETAILS
        if document_count is None:
            raise ValueError("document_count is required with document_frequencies")
        self.threshold = threshold
        self.option_weight = option_weight
        self.outside_weight = outside_weight
        self.other_weight = other_weight
        self.evidence_half = evidence_half
        self.question_cues = question_cues
        self.share_words = share_words
        self.split_parts = split_parts
        self._frequencies = dict(document_frequencies)
        self._count = document_count

    def idf(self, stem_: str) -> float:
        """Inverse document frequency; a stem rarer than the shipped table counts as unseen."""
        return math.log((self._count + 1) / (self._frequencies.get(stem_, 0) + 1))

    def scores(self, question: str, details: Sequence) -> list[float]:
        """One score in [0, 1] per detail: how surely the question, or one of its parts, asks
        about it. Parts let a question that asks for two details match both: as a whole, each
        of them explains only half of it."""
        terms = [_detail_stems(d) for d in details]
        parts = question_parts(question) if self.split_parts else (question,)
        by_part = [self._part_scores(part, terms) for part in parts]
        return [max(column) for column in zip(*by_part)] if terms else []

    def _part_scores(self, text: str, terms) -> list[float]:
        used = frozenset().union(*(d | o for d, o in terms))
        asked = content_stems(text)
        if self.question_cues:  # a cue word no detail uses is no evidence against any
            asked |= question_stems(text) & used
        weight = self._weights(asked, terms)
        outside = self.outside_weight * sum(weight[s] for s in asked - used)
        return [self._score(asked & used, d, o, weight, outside) for d, o in terms]

    def asked(self, question: str, details: Sequence) -> list[int]:
        """Indices of the details the question asks about, best first (none: off topic)."""
        scores = self.scores(question, details)
        chosen = [i for i, s in enumerate(scores) if s >= self.threshold]
        return sorted(chosen, key=lambda i: (-scores[i], i))

    def _weights(self, asked: frozenset[str], terms) -> dict[str, float]:
        """IDF of each stem in play, divided among the task's details that use it."""
        users = Counter(s for d, o in terms for s in d | o)
        stems = asked.union(*(d | o for d, o in terms))
        share = (lambda s: max(1, users[s])) if self.share_words else (lambda s: 1)
        return {s: self.idf(s) / share(s) for s in stems}

    def _score(self, asked, described, options, weight, outside) -> float:
        """Geometric mean of description coverage, question share and evidence (module doc)."""
        matched = sum(weight[s] for s in asked & described) + self.option_weight * sum(
            weight[s] for s in asked & options
        )
        if matched <= 0:
            return 0.0
        own = sum(weight[s] for s in asked & (described | options))
        others = self.other_weight * sum(weight[s] for s in asked - described - options)
        description_mass = sum(weight[s] for s in described)
        coverage = min(1.0, matched / description_mass) if description_mass else 1.0
        share = min(1.0, matched / (own + others + outside))
        evidence = matched / (matched + self.evidence_half)
        return (coverage * share * evidence) ** (1 / 3)


# In how many of the calibration tasks' details each stem occurs (stems seen fewer than 5 times
# are left out and count as unseen). Printed by `python benchmarks/in3_matcher.py --frequencies`.
CALIBRATION_DETAILS = 2848
CALIBRATION_FREQUENCIES = (
    "000:18 10:69 100:50 1000:21 11:6 12:13 1200:5 13:7 15:22 150:8 1500:15 1800:6 20:39 200:12 "
    "2000:6 24:10 30:47 300:6 45:7 50:37 500:39 60:16 above:32 absol:5 abstr:7 acade:28 acces:22 "
    "accla:6 accom:8 accou:7 accur:5 actio:6 activ:41 addit:24 addre:13 adjus:7 admin:9 adult:15 "
    "advan:135 adven:6 aft:9 after:15 age:31 ai:9 air:5 airli:8 algor:15 aller:20 am:6 amazo:12 "
    "amd:5 amen:5 ameri:17 amoun:10 analy:91 andro:11 angel:8 anima:7 anyth:5 apart:14 api:7 "
    "app:29 apple:17 appli:22 appoi:5 appro:8 archi:6 area:66 art:24 artic:33 artis:10 asia:8 "
    "asian:11 aspec:32 astro:6 attac:11 attem:6 atten:5 attir:5 audie:29 audio:11 audit:6 authe:5 "
    "autho:10 autom:15 avail:67 avera:10 avoid:36 back:9 backg:8 backu:36 backy:8 bak:11 balan:11 "
    "band:8 bas:39 bash:10 basic:60 batte:8 bbc:6 beach:6 befor:6 begin:149 behav:6 best:24 "
    "bett:6 betwe:17 big:7 bill:5 birth:6 block:6 blog:7 body:6 book:48 books:5 both:33 brand:37 "
    "break:16 breat:8 brief:13 brigh:5 brows:6 budge:118 build:8 busi:33 but:10 buy:5 calcu:9 "
    "calor:11 camer:12 camry:6 capab:5 capit:5 car:19 carb:9 card:6 cardi:11 care:10 case:6 "
    "casua:20 categ:18 caus:5 cent:8 centr:6 certa:24 certi:11 chall:17 chang:23 chara:7 chart:17 "
    "check:17 chica:6 chick:9 child:23 choic:6 cit:7 city:30 civic:5 clas:5 class:40 clean:10 "
    "clima:17 cloth:14 cloud:17 cnn:5 coast:8 cod:11 code:17 cold:7 colle:8 color:22 colum:9 "
    "com:12 combi:6 comed:5 comfo:9 comma:15 comme:9 commi:21 commo:5 commu:19 compa:46 compl:48 "
    "compo:18 compr:28 compu:26 conce:36 condi:35 confe:7 confi:5 conne:10 conse:11 consi:14 "
    "conso:13 const:57 consu:12 conta:10 conte:56 contr:15 conve:21 cook:17 cool:10 corpo:9 "
    "corre:5 cost:10 count:35 cours:61 cover:6 cpu:13 craft:8 cre:5 creat:20 credi:5 crite:44 "
    "criti:11 crypt:8 csv:25 cuisi:19 cultu:15 curre:96 custo:64 dai:38 dairy:14 dat:11 data:107 "
    "datab:25 datas:11 date:40 day:43 debt:9 decad:6 decis:6 decor:11 dedic:5 deep:6 defau:5 "
    "defin:33 deliv:5 depar:10 depth:41 descr:7 desig:18 desir:27 desk:7 deskt:7 desse:6 desti:12 "
    "detai:83 detec:5 devel:39 devic:26 diabe:5 diet:5 dieta:64 diffe:12 diffi:19 digit:26 din:13 "
    "direc:33 disco:7 dish:5 disk:8 displ:7 diver:6 diy:7 docto:5 docu:24 dog:7 down:5 downl:16 "
    "drain:6 driv:5 drive:13 dry:8 dumbb:7 dur:33 ear:8 easy:15 ebay:5 eco:7 econo:26 edit:11 "
    "educ:18 educa:28 effec:10 effic:9 egg:6 ele:14 elect:20 email:50 emerg:8 emoti:5 emplo:9 "
    "encry:9 end:9 endur:5 energ:22 engin:7 engli:26 enter:7 entry:11 envir:33 equip:32 error:14 "
    "europ:17 even:17 event:43 every:8 exact:5 exam:7 examp:10 excel:13 excep:5 exclu:6 exerc:41 "
    "exist:30 expec:7 expen:11 exper:105 expla:9 explo:5 exten:18 exter:11 extra:9 eye:5 facto:8 "
    "fall:5 fami:26 famil:14 fanta:5 fashi:7 featu:58 feet:5 festi:5 few:19 fi:6 fib:5 ficti:12 "
    "field:14 fil:25 file:82 filt:10 filte:5 finan:26 find:5 fine:17 first:8 fish:6 fit:28 fix:12 "
    "flexi:24 focu:51 focus:10 fold:17 food:31 ford:8 forec:5 fores:5 form:7 forma:113 frame:43 "
    "free:94 frenc:13 frequ:33 frien:30 ft:7 fuel:6 full:29 funct:19 fund:7 furni:10 gain:15 "
    "gam:27 game:5 garde:21 gdp:5 gener:69 genr:11 genre:20 geogr:14 githu:6 globa:20 glute:43 "
    "gmail:5 goal:73 googl:25 gover:9 gpu:5 grade:5 gradu:5 gramm:5 graph:24 green:10 groce:6 "
    "group:19 growt:13 guest:5 guid:18 guide:17 gym:16 habit:16 half:5 hand:12 handl:26 hard:9 "
    "hardw:8 haven:5 head:5 healt:55 heart:5 heat:6 heavy:5 herb:5 high:82 highe:12 histo:35 "
    "home:71 honda:8 hoste:5 hot:8 hotel:8 hour:60 house:24 human:9 hybri:6 ident:8 ignor:9 "
    "illus:8 imag:5 image:11 impac:18 impor:10 impro:36 inch:5 inclu:63 incom:12 incor:5 incre:10 "
    "india:6 indoo:11 indus:34 infor:62 ingre:24 injur:5 input:8 insta:13 instr:10 insur:6 "
    "integ:15 intel:9 inten:29 inter:325 intro:6 inves:32 ios:11 iphon:6 issu:14 issue:5 itali:13 "
    "item:19 javas:12 jazz:5 job:15 journ:14 js:6 json:21 june:5 keep:9 key:16 kingd:7 kitch:7 "
    "knowl:30 known:11 label:7 landm:7 lands:14 langu:70 lapto:12 larg:5 large:43 last:20 late:5 "
    "lates:18 layou:9 leade:7 learn:77 lectu:5 lengt:31 les:50 lesso:8 level:224 libra:25 life:17 "
    "lifes:13 light:18 limit:33 line:11 link:8 linux:24 list:41 liter:8 liv:6 live:7 loan:6 "
    "loc:68 local:32 log:11 logic:5 londo:5 long:33 los:23 low:37 lunch:6 luxur:16 machi:26 "
    "maco:25 main:7 maint:10 major:11 mak:9 make:9 manag:34 manua:15 marke:33 match:6 mater:26 "
    "maxim:5 meal:11 measu:13 meat:7 mecha:5 media:22 medic:20 medit:35 mediu:53 meet:8 memb:9 "
    "membe:5 memor:11 merge:5 messa:11 metho:80 metri:14 mexic:8 mid:31 mindf:18 minim:23 "
    "minut:49 misce:6 mix:22 mode:8 model:31 moder:72 modif:5 modul:5 monit:6 month:77 morn:16 "
    "mortg:7 mount:7 mov:7 move:10 multi:31 muscl:16 music:26 mysql:6 myste:6 nam:12 name:28 "
    "nas:5 natio:6 natur:27 netwo:27 neutr:6 new:60 next:10 nltk:5 non:13 none:16 north:15 not:5 "
    "notif:12 novel:6 numb:65 numer:7 nut:28 nutri:12 objec:13 occas:6 off:6 offic:27 oil:7 "
    "old:12 one:16 onlin:41 open:21 opera:22 opini:5 oppor:5 optim:5 optio:18 ord:11 organ:32 "
    "origi:8 out:7 outco:5 outdo:15 outli:5 outpu:30 over:55 overa:7 overv:36 pac:6 packa:5 pag:8 "
    "page:14 paid:24 paint:12 panda:6 pap:16 parag:5 paren:5 park:9 part:8 parti:9 party:8 "
    "passw:8 past:18 pasta:6 path:9 patte:12 pay:10 pdf:16 peer:6 per:15 perfo:42 perio:18 "
    "perso:69 pet:6 phone:9 photo:19 physi:32 plain:9 plant:8 platf:53 play:11 playl:8 plot:11 "
    "pm:6 point:12 polic:10 polit:7 pop:10 popul:17 portf:6 portr:9 posit:13 post:8 postg:5 pow:7 "
    "power:7 pract:26 predi:13 prefi:7 premi:13 prepa:8 prese:29 previ:12 pric:5 price:26 print:7 "
    "prior:22 priva:12 pro:5 probl:10 proce:24 produ:22 profe:43 profi:19 progr:37 proje:26 "
    "prote:16 provi:6 publi:41 purch:12 purpo:41 puzzl:5 pytho:45 qual:14 quant:7 quest:6 "
    "quick:15 ram:7 range:57 rank:10 rat:33 rate:6 raw:9 react:6 read:28 real:8 recei:6 recen:16 "
    "recip:10 recog:5 recom:5 recor:5 reduc:17 regio:39 regul:9 relat:13 relax:14 remin:9 remov:6 "
    "renam:7 rent:6 repai:6 repor:40 reput:7 requi:85 resea:35 resid:5 resis:8 resol:5 resou:38 "
    "respo:12 restr:66 resul:15 retai:5 retir:8 retur:5 revie:38 risk:9 rock:6 roman:11 room:14 "
    "root:5 rout:8 route:7 routi:5 row:6 runn:5 runti:5 rusti:5 sal:8 salar:5 samsu:6 satis:5 "
    "sav:18 save:8 sched:6 schol:5 schoo:10 scien:36 scope:14 scrap:19 scrat:6 scree:5 scrip:20 "
    "seafo:6 searc:5 seaso:8 secti:7 secto:5 secur:20 sedan:7 selec:5 self:16 sell:5 send:11 "
    "senio:17 senti:14 seo:5 separ:10 ser:9 serv:20 servi:31 sessi:12 sett:9 setup:13 sever:7 "
    "shell:8 shopp:5 short:27 signi:7 simpl:24 singl:16 sit:7 site:9 situ:11 siz:15 size:69 "
    "skill:65 sleep:5 slow:9 small:47 smart:20 snack:7 socia:28 softw:39 solut:16 song:10 sort:15 "
    "sourc:64 south:8 soy:10 space:25 spam:5 spani:27 spe:8 speak:6 speci:50 sport:9 spoti:7 "
    "sprea:9 sq:5 sql:7 squar:5 stand:22 star:9 start:24 stat:9 state:13 stati:30 statu:8 step:12 "
    "stock:8 stor:5 stora:25 store:7 story:7 str:5 strat:16 strea:8 stree:10 stren:12 stres:16 "
    "stron:6 struc:23 stude:14 study:27 styl:6 style:57 subdi:6 subje:13 subsc:7 sugar:6 summ:6 "
    "summa:44 suppl:7 suppo:17 sure:20 surve:8 survi:6 suv:6 sweet:5 synta:8 syste:57 table:9 "
    "take:6 targe:25 task:17 tech:13 techn:96 tempe:15 templ:5 term:19 test:10 text:61 textb:5 "
    "them:16 theme:7 theor:8 throu:7 tim:18 time:169 timel:8 toddl:5 tofu:7 tokyo:5 toler:9 "
    "tool:59 top:28 topic:24 touri:5 townh:5 toyot:8 track:12 trad:5 tradi:12 traff:9 trail:6 "
    "train:21 trans:29 trave:26 treat:12 trend:23 tri:6 trip:14 tropi:8 tutor:35 tweet:5 txt:9 "
    "ubunt:5 und:79 under:14 uniqu:5 unit:16 unive:10 up:17 updat:18 upgra:5 urban:7 url:7 "
    "usage:24 use:72 used:18 using:11 util:7 vac:6 valu:8 value:8 var:5 varia:9 ve:5 vegan:32 "
    "veget:39 vehic:6 versi:10 video:58 virtu:8 visit:5 visua:25 volum:11 vpn:5 warm:5 waste:7 "
    "wat:14 watch:6 water:5 weath:9 web:28 websi:25 week:52 weekd:8 weeke:10 weigh:20 well:16 "
    "wi:6 wildl:7 will:10 windo:31 wint:5 withi:53 witho:9 wood:5 word:10 work:53 worko:11 "
    "works:12 world:12 writ:12 writt:25 year:58 yet:5 yoga:12 york:16 young:7 youtu:6 zip:10 "
)
