"""The built-in texts the ONNX quality gate measures an export on (packaging/_onnx.py).

Validation texts: sentences of the lengths buyers send (questions, passages, a few long ones). The
retrieval set: ten passages on each of ten distinct topics, and one query per topic.
"""

from __future__ import annotations

VALIDATION_TEXTS = [
    "How do I reset the password of my online banking account?",
    "The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "What is the difference between a Roth IRA and a traditional retirement account?",
    "Kubernetes restarts a container when its liveness probe fails three times in a row.",
    "cheap flights from Berlin to Lisbon in late September",
    "A transformer encoder maps each token to a contextual vector using self-attention.",
    "Return policy: unused items can be sent back within thirty days for a full refund.",
    "The central bank raised interest rates by a quarter point to curb inflation.",
    "Which hiking trails near Zurich are suitable for families with small children?",
    "Marie Curie was the first person to win Nobel Prizes in two different sciences.",
    "Regular exercise lowers blood pressure and reduces the risk of heart disease.",
    "To cancel your subscription, open account settings and choose manage billing.",
    "The treaty was signed in 1648 and ended the Thirty Years' War in central Europe.",
    "Vector databases index embeddings so that nearest neighbours are found in milliseconds.",
    ("Semantic search ranks documents by meaning rather than by shared keywords. An embedding model maps "
     "queries and passages into one vector space, where relevant passages lie close to the query, so that a "
     "question about resetting a password finds the help page about recovering a forgotten login even when "
     "the two share no words. Rerankers then read the query and each candidate together to order the few best."),
    ("The quarterly report shows revenue grew eight percent while operating costs stayed flat, lifting the "
     "operating margin to its highest level in three years. Management attributed the growth to the new "
     "subscription tier and to lower churn among enterprise customers, and raised its guidance for the year."),
]

# topic -> passages: ten each, so that a query's top-10 neighbours are its own topic's passages, apart from
# every other topic by a margin: the neighbours a quantised model must find again
_TOPICS = {
    "password recovery": [
        "Forgot your password? Use the reset link on the login page to choose a new one.",
        "A one-time code is sent to your phone before you can set a new account password.",
        "Support staff will never ask you to tell them your password over the phone.",
        "After five failed sign-in attempts the account is locked for fifteen minutes.",
        "The password reset email expires after one hour; request a new link if it has.",
        "If the reset email does not arrive, check your spam folder for the login message.",
        "Choose a new password of at least twelve characters that you have not used before.",
        "You can recover your account with a backup code if you lost the phone for sign-in.",
        "Changing your password signs you out of the banking app on every other device.",
        "Security questions are no longer used to recover a forgotten online banking login.",
    ],
    "coral reefs": [
        "Coral reefs cover less than one percent of the ocean floor but host a quarter of marine species.",
        "Rising sea temperatures cause corals to expel their algae and bleach white.",
        "The Great Barrier Reef stretches for more than two thousand kilometres off Australia.",
        "Parrotfish grind dead coral into the fine white sand of tropical beaches.",
        "Coral polyps build reefs by secreting skeletons of calcium carbonate.",
        "Ocean acidification makes it harder for reef-building corals to grow their skeletons.",
        "Bleached corals can recover if the water cools before they starve.",
        "Reefs protect coastlines by breaking waves before they reach the shore.",
        "Divers can damage coral by touching it or stirring up sand with their fins.",
        "Marine reserves let overfished reefs recover their fish and coral cover.",
    ],
    "interest rates": [
        "Central banks raise interest rates to cool demand when inflation runs above target.",
        "Higher policy rates make mortgages and business loans more expensive for borrowers.",
        "Bond prices fall when market interest rates rise.",
        "A rate cut usually weakens the currency and supports exporters.",
        "Savers earn more on deposits after the central bank raises its interest rate.",
        "Variable-rate mortgage payments go up soon after a central bank rate hike.",
        "The central bank's rate decision is announced after its monetary policy meeting.",
        "Markets price in future rate hikes long before the central bank announces them.",
        "Raising rates too fast can push an economy into recession and raise unemployment.",
        "Lower interest rates encourage companies to borrow and invest in new projects.",
    ],
    "container orchestration": [
        "Kubernetes schedules containers onto nodes with enough free memory and CPU.",
        "A readiness probe keeps traffic away from a pod until its application can serve.",
        "Rolling updates replace pods one by one so the service never goes down.",
        "Horizontal pod autoscaling adds replicas when average CPU use passes a threshold.",
        "The Kubernetes scheduler skips nodes whose taints the pod does not tolerate.",
        "Resource requests tell Kubernetes how much CPU and memory a container needs to run.",
        "A liveness probe restarts a container whose process has stopped responding.",
        "Node affinity rules make Kubernetes place pods on nodes with matching labels.",
        "A deployment keeps the requested number of pod replicas running at all times.",
        "When a node fails, Kubernetes reschedules its pods onto the healthy nodes.",
    ],
    "baking bread": [
        "Sourdough rises with wild yeast and lactic acid bacteria instead of commercial yeast.",
        "Knead the dough until it is smooth and springs back when pressed.",
        "A hot oven with steam gives bread a crisp, shiny crust.",
        "Let the loaf cool for an hour before slicing so the crumb can set.",
        "Bake the loaf in a preheated Dutch oven to trap steam for a crunchy crust.",
        "Brushing the dough with water before baking helps the crust turn crisp and golden.",
        "High-protein bread flour gives the dough the gluten it needs to rise well.",
        "Proofing the shaped loaf overnight in the fridge deepens the bread's flavour.",
        "Score the top of the loaf with a sharp blade so it expands evenly in the oven.",
        "A loaf is done when it sounds hollow if you tap on the bottom of the crust.",
    ],
    "vaccines": [
        "Vaccines train the immune system to recognise a pathogen without causing the disease.",
        "Booster doses restore protection that wanes months after the first vaccination.",
        "mRNA vaccines instruct cells to make a harmless piece of the virus's spike protein.",
        "Herd immunity protects people who cannot be vaccinated themselves.",
        "After vaccination the body makes antibodies and memory cells against the disease.",
        "Vaccines are tested in large clinical trials for safety before they are approved.",
        "Sore arms and mild fever after a vaccine show the immune system is responding.",
        "Measles vaccination has prevented millions of deaths since it was introduced.",
        "Flu vaccines are updated every year to match the strains expected to circulate.",
        "Some vaccines use a weakened live virus to build lasting immunity against disease.",
    ],
    "electric cars": [
        "Electric cars convert about ninety percent of battery energy into motion.",
        "Fast chargers can refill most of an electric car's battery in half an hour.",
        "Cold weather reduces an electric car's driving range by heating the cabin and battery.",
        "Regenerative braking in an electric car recovers energy when it slows down.",
        "An electric car's battery range drops in winter because the battery works less well when cold.",
        "Preheating an electric car while it charges saves range on cold winter mornings.",
        "Heat pumps help electric cars keep more of their driving range in cold weather.",
        "Electric car batteries usually keep most of their capacity after ten years of driving.",
        "Charging an electric car at home overnight costs less than filling a tank with petrol.",
        "Electric cars have fewer moving parts than petrol cars and need less maintenance.",
    ],
    "volcanoes": [
        "Volcanoes erupt when molten rock rises through cracks in the Earth's crust.",
        "Iceland sits on a mid-ocean ridge and has dozens of active volcanoes.",
        "Volcanic ash from an eruption grounded flights across Europe in the spring of 2010.",
        "Lava flows from shield volcanoes are runny and travel long distances.",
        "Gas pressure in the magma chamber drives an explosive volcanic eruption.",
        "Magma rises toward the surface because it is lighter than the surrounding rock.",
        "Volcanologists watch for small earthquakes that warn of an eruption.",
        "Pyroclastic flows of hot gas and rock race down a volcano's slopes during eruptions.",
        "Most volcanoes form where tectonic plates pull apart or one plate dives under another.",
        "Sticky, gas-rich magma makes the most violent volcanic eruptions.",
    ],
    "sleep": [
        "Adults need between seven and nine hours of sleep each night.",
        "Blue light from screens delays the release of the sleep hormone melatonin.",
        "Deep sleep is when the body repairs muscles and consolidates memories.",
        "Caffeine can keep you awake for up to six hours after your last coffee.",
        "Going to bed at the same time every night helps adults sleep better.",
        "Teenagers need more hours of sleep each night than most adults do.",
        "A cool, dark and quiet bedroom makes it easier to fall asleep.",
        "Regular lack of sleep raises the risk of heart disease and weight gain in adults.",
        "Short naps of twenty minutes restore alertness without making you groggy.",
        "Adults who sleep fewer than six hours a night are more likely to catch colds.",
    ],
    "chess": [
        "In chess, castling moves the king two squares toward a rook for safety.",
        "The Sicilian Defence is the most popular reply to the king's pawn opening in chess.",
        "A chess stalemate happens when the player to move has no legal move and the king is not in check.",
        "Grandmasters calculate many moves ahead in sharp tactical chess positions.",
        "In chess the king may never move onto a square attacked by an enemy piece.",
        "Checkmate ends a chess game when the king is attacked and cannot escape.",
        "A chess player may not castle if the king has moved or is in check.",
        "The king is the most important chess piece but one of the weakest in the opening.",
        "In the chess endgame the king becomes an active piece that attacks pawns.",
        "A pawn that reaches the last rank of the chess board is promoted, usually to a queen.",
    ],
}

QUERIES = [
    "I can't log in, how do I get a new password?",
    "why are coral reefs turning white",
    "what happens to loans when the central bank raises rates",
    "how does Kubernetes decide where to run a container",
    "tips for a crispy crust on homemade bread",
    "how do vaccines protect against disease",
    "how far can an electric car drive in winter",
    "what causes a volcanic eruption",
    "how many hours of sleep do adults need",
    "rules of chess about the king",
]

PASSAGES = [passage for passages in _TOPICS.values() for passage in passages]


# --- the built-in images (multimodal models) ------------------------------------------------------------------
# Drawn here, deterministically (no files to ship, no randomness): one image per pattern and colour, each with a
# caption saying what it shows, in sizes and aspect ratios that exercise the processor's resize and centre crop.
# The gate compares every image's vector and the top-10 neighbours across the two modalities (image -> captions
# and validation texts, caption -> images).
_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
            "black": (20, 20, 20)}
_PATTERNS = ("a circle", "a square", "horizontal stripes", "a checkerboard", "a diagonal gradient")
_SIZES = ((64, 48), (80, 80), (48, 96), (120, 90), (37, 53))  # width, height


def _drawn(pattern: str, colour: tuple[int, int, int], width: int, height: int):
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    white = np.full((height, width, 3), 255, dtype=np.float64)
    if pattern == "a circle":
        mask = (x - width / 2) ** 2 + (y - height / 2) ** 2 <= (min(width, height) / 3) ** 2
    elif pattern == "a square":
        side = min(width, height) // 2
        mask = (abs(x - width // 2) < side // 2) & (abs(y - height // 2) < side // 2)
    elif pattern == "horizontal stripes":
        mask = (y // max(2, height // 8)) % 2 == 0
    elif pattern == "a checkerboard":
        mask = ((x // max(2, width // 6)) + (y // max(2, height // 6))) % 2 == 0
    else:
        mask = None
    if mask is None:  # colour fading into white from the top left corner
        share = ((x / width + y / height) / 2)[..., None]
        pixels = share * white + (1 - share) * np.asarray(colour, dtype=np.float64)
    else:
        pixels = np.where(mask[..., None], np.asarray(colour, dtype=np.float64), white)
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def validation_images() -> list[tuple[str, str]]:
    """(caption, PNG data URI) of each built-in image: 25, five patterns in five colours."""
    import base64
    import io

    images = []
    for number, (pattern, (colour, rgb)) in enumerate((p, c) for p in _PATTERNS for c in _COLOURS.items()):
        buffer = io.BytesIO()
        _drawn(pattern, rgb, *_SIZES[number % len(_SIZES)]).save(buffer, format="PNG")
        uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        images.append((f"{pattern} in {colour} on a white background", uri))
    return images
