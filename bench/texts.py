"""Fixed, realistic benchmark texts: search queries and passages of 12-25 word pieces, and long passages.

Fixed so that runs compare; varied so that no system can win by caching one input.
"""

from __future__ import annotations

SHORT = [
    "How do I reset the password of my online banking account without calling support?",
    "The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair.",
    "Best practices for storing user passwords securely in a relational database",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "What is the difference between a Roth IRA and a traditional individual retirement account?",
    "Symptoms of vitamin D deficiency include fatigue, bone pain and muscle weakness.",
    "Kubernetes restarts a container when its liveness probe fails three times in a row.",
    "cheap flights from Berlin to Lisbon in late September with one checked bag",
    "The mitochondria is the organelle that produces most of the cell's supply of ATP.",
    "How long should I boil an egg to get a soft yolk and a firm white?",
    "Rust's borrow checker prevents data races by enforcing ownership rules at compile time.",
    "The quarterly report shows revenue grew eight percent while operating costs stayed flat.",
    "Which hiking trails near Zurich are suitable for families with small children?",
    "A transformer encoder maps each token to a contextual vector using self-attention.",
    "Return policy: unused items can be sent back within thirty days for a full refund.",
    "Why does my laptop battery drain so quickly when the screen is turned off?",
    "The Great Barrier Reef is the largest coral reef system on Earth, visible from space.",
    "Python list comprehensions are usually faster than equivalent for loops with append.",
    "symptoms of a sprained ankle versus a broken ankle and when to see a doctor",
    "The central bank raised interest rates by a quarter point to curb persistent inflation.",
    "Our support team answers emails within one business day, including public holidays.",
    "How to configure a reverse proxy with TLS termination in front of a web application",
    "Marie Curie was the first person to win Nobel Prizes in two different sciences.",
    "The new firmware update improves Wi-Fi stability and fixes a Bluetooth pairing bug.",
    "What are the visa requirements for a short business trip to Japan from Canada?",
    "Regular exercise lowers blood pressure and reduces the risk of heart disease.",
    "Vector databases index embeddings so that nearest neighbours can be found in milliseconds.",
    "recipe for a vegan chocolate cake without eggs, butter or refined sugar",
    "The Amazon rainforest produces a significant share of the world's oxygen and rainfall.",
    "To cancel your subscription, open account settings and choose manage billing.",
    "Which programming language should a beginner learn first for data analysis?",
    "The treaty was signed in 1648 and ended the Thirty Years' War in central Europe.",
    "Solar panels lose a small fraction of their efficiency every year they are in service.",
    "How can I merge two pandas data frames on a column with different names?",
    "The museum is open from ten in the morning until six, closed on Mondays.",
    "Gradient descent updates model weights in the direction that reduces the training loss.",
    "Is it safe to take ibuprofen and paracetamol together for a fever in adults?",
    "The apartment has two bedrooms, a balcony facing south and a renovated kitchen.",
    "Machine translation quality improved sharply after neural sequence models replaced phrase tables.",
    "How much water should a dog drink per day depending on its weight?",
    "The electric car charges from ten to eighty percent in about twenty-five minutes.",
    "Shakespeare wrote Hamlet around 1600, and it remains his longest play.",
    "Error 503 means the server is temporarily unable to handle the request; retry later.",
    "Which houseplants survive in low light and need watering only once a week?",
    "The company announced a merger that will create the largest logistics firm in Europe.",
    "Caching query results reduces database load but risks serving stale data to users.",
    "How do noise cancelling headphones reduce the sound of airplane engines?",
    "The marathon route passes the old harbour, the cathedral and the central park.",
    "Antibiotics do not work against viral infections such as the common cold or flu.",
    "Steps to apply for a mortgage when you are self-employed with irregular income",
    "Honey never spoils because its low moisture and high acidity prevent bacterial growth.",
    "The API returns a paginated list of orders sorted by creation date, newest first.",
    "What is the capital of Australia, and why is it not Sydney or Melbourne?",
    "Cross-encoders score a query and a document together and are more accurate than bi-encoders.",
    "The hotel offers free breakfast, an indoor pool and parking for guests with cars.",
    "How do I remove a stripped screw from a piece of wooden furniture?",
    "Glaciers in the Alps have lost more than half of their volume since 1900.",
    "Unit tests should be fast, isolated and assert exactly one behaviour of the code.",
    "When is the best season to see the northern lights in northern Norway?",
    "The violin concerto was first performed in Leipzig in 1845 with Mendelssohn conducting.",
    "Compound interest means earning returns on both the principal and previous returns.",
    "how to fix a leaking kitchen faucet with a single handle cartridge",
    "Sleep deprivation impairs memory consolidation and slows reaction times noticeably.",
    "The library lends e-books for three weeks, and loans can be renewed twice online.",
]

RERANK_QUERY = "How do vector search engines find similar documents quickly?"


def long_texts(tokenizer, count: int = 32, target_tokens: int = 250) -> list[str]:
    """Passages of about `target_tokens` word pieces, each a different run of the short texts."""
    texts = []
    for start in range(count):
        words: list[str] = []
        index = start
        while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) < target_tokens:
            words.extend(SHORT[index % len(SHORT)].split())
            index += 1
        while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) > target_tokens:
            words.pop()
        texts.append(" ".join(words))
    return texts
