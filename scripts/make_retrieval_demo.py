"""Builds the retrieval examples of kiln's demo repository, deterministically (fixed seeds,
nothing downloaded):

    python scripts/make_retrieval_demo.py [--out examples/models] [--fixtures examples/fixtures]

help_center      a collection of 24 help-center passages of a bank (written here), embedded by
                 the repository's all-minilm-l6-v2 when kiln loads them; support_answer
                 (pipeline.toml, written by hand) retrieves 3 and has SmolLM2 answer from them.
items            a collection of 5,000 catalogue items: 16-dimension vectors from a matrix
                 factorization (scikit-learn TruncatedSVD) of synthetic users x items
                 interactions, payloads with title, category, popularity and price.
recommend_ranker a GradientBoostingClassifier (skl2onnx) that scores (user, candidate) pairs
                 from affinity, popularity and price, wrapped to score a whole [N, k] grid of
                 candidates at once; the recommend pipeline retrieves 200 candidates per user
                 vector, ranks them with it and returns the top 10.

The fixture `recommend.json` holds user vectors and the top 10 the Python prototype computes for
them (numpy exact search + the same ranker on onnxruntime), so tests compare kiln against it.
"""

import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import GradientBoostingClassifier

SEED = 11
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
USERS, ITEMS, DIM, CATEGORIES = 3000, 5000, 16, 8
CANDIDATES, TOP = 200, 10
CATEGORY_NAMES = ["books", "music", "games", "garden", "kitchen", "sports", "toys", "travel"]

# The help center: (id, title, text). Short, concrete, and distinct enough that a question
# about one retrieves it first.
PASSAGES = [
    ("card-lost", "Lost or stolen card", "If your card is lost or stolen, freeze it at once in the app under Cards > Freeze, then order a replacement. Frozen cards refuse every payment; a new card arrives in 3 to 5 working days."),
    ("card-declined", "Card declined", "A payment can be declined when the card is frozen, the daily limit is reached, the merchant is blocked for online payments, or the PIN was entered wrongly three times."),
    ("pin-reset", "Forgotten PIN", "You can see your PIN in the app under Cards > Show PIN after confirming with your fingerprint or passcode. A PIN blocked after three wrong attempts unblocks at any of our cash machines."),
    ("card-limit", "Card limits", "Daily card limits are 1,000 euros for payments and 500 euros for cash withdrawals. You can raise them for 24 hours in the app under Cards > Limits."),
    ("contactless", "Contactless payments", "Contactless payments work up to 50 euros without a PIN. After five contactless payments in a row the terminal asks for the PIN once, for your security."),
    ("transfer-time", "How long transfers take", "Transfers to other accounts in the euro area arrive within one working day; instant transfers arrive in seconds, up to 15,000 euros, at no extra cost."),
    ("transfer-cancel", "Cancelling a transfer", "A scheduled transfer can be cancelled in the app until the day before it runs. An instant transfer cannot be recalled once it is sent; contact the recipient's bank instead."),
    ("transfer-abroad", "Transfers outside the euro area", "International transfers outside the euro area cost 5 euros plus the exchange margin shown before you confirm, and take two to four working days."),
    ("iban", "Finding your IBAN", "Your IBAN is shown in the app under Account > Details and on every statement. You can share it with the share button next to it."),
    ("refund", "Refund of a card payment", "If a merchant does not refund you, open the payment in the app and choose Dispute. We answer within 10 working days and refund the amount while we investigate when the case is clear."),
    ("fraud-report", "Reporting fraud", "If you see a payment you did not make, freeze your card, then report it in the app under Help > Report fraud or call the 24-hour line on the back of your card. You are not liable for fraud you report promptly."),
    ("phishing", "Suspicious messages", "We never ask for your PIN, passcode or full card number by phone, e-mail or text message. Do not click links in such messages; forward them to our security team."),
    ("account-open", "Opening an account", "You can open an account in the app in about ten minutes with a valid passport or ID card and a selfie video. The account is free for residents of the euro area."),
    ("account-close", "Closing your account", "To close your account, move your balance out, cancel direct debits, then choose Account > Close in the app. The closure takes effect within two working days."),
    ("statement", "Account statements", "Monthly statements are in the app under Account > Statements as PDF files; you can also export a date range as CSV for your accounting."),
    ("overdraft", "Overdraft", "An arranged overdraft of up to 2,000 euros can be requested in the app. Interest of 9.9 percent a year is charged only on the amount you use, for the days you use it."),
    ("savings-rate", "Savings interest", "The savings pocket pays 2.5 percent interest a year, calculated daily and paid monthly. You can move money in and out at any time without a fee."),
    ("direct-debit", "Direct debits", "Direct debits appear under Payments > Direct debits. You can stop one there, and you can ask for a refund of an authorised direct debit within eight weeks."),
    ("app-login", "Cannot log in to the app", "If you cannot log in, check that the app is up to date, then reset your passcode with Forgot passcode on the login screen. After five wrong attempts the app locks for 30 minutes."),
    ("new-phone", "Moving to a new phone", "Before switching phones, log out of the old one. On the new phone, install the app, log in with your e-mail and confirm with the code we text to your registered number."),
    ("fees", "Fees", "Card payments in euros, cash withdrawals up to five a month and transfers in the euro area are free. Further withdrawals cost 2 euros each."),
    ("atm-cash", "Cash withdrawal problems", "If a cash machine kept your money but charged your account, report it in the app under Help > Cash machine problem; we return the amount within five working days after checking."),
    ("joint-account", "Joint accounts", "A joint account can have two holders who each get a card and full access in their own app. Either holder can close it, and both are responsible for an overdraft."),
    ("address-change", "Changing your address", "You can change your address in the app under Profile > Address. We may ask for a proof of address such as a utility bill less than three months old."),
]


def write_json_lines(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def help_center(out_dir):
    folder = os.path.join(out_dir, "help_center")
    os.makedirs(folder, exist_ok=True)
    write_json_lines(os.path.join(folder, "points.jsonl"), [
        {"id": pid, "text": f"{title}. {text}", "payload": {"title": title, "text": text}}
        for pid, title, text in PASSAGES
    ])


def synthetic_catalogue(rng):
    """Users and items with hidden tastes; interactions drawn from them."""
    centroids = rng.normal(size=(CATEGORIES, DIM))
    category = rng.integers(0, CATEGORIES, size=ITEMS)
    true_items = centroids[category] + 0.6 * rng.normal(size=(ITEMS, DIM))
    user_home = rng.integers(0, CATEGORIES, size=USERS)
    true_users = centroids[user_home] + 0.8 * rng.normal(size=(USERS, DIM))
    popularity = rng.lognormal(mean=0.0, sigma=1.0, size=ITEMS)
    price = np.round(rng.lognormal(mean=3.0, sigma=0.6, size=ITEMS), 2)
    price_sensitivity = rng.uniform(0.2, 1.5, size=USERS)
    return category, true_items, true_users, popularity, price, price_sensitivity


def click_probability(true_users, true_items, popularity, price, sensitivity, users, items):
    logit = (
        1.5 * np.einsum("ij,ij->i", true_users[users], true_items[items]) / np.sqrt(DIM)
        + 0.8 * np.log(popularity[items])
        - 2.0 * sensitivity[users] * np.log(price[items] / 20.0)
        - 8.0
    )
    return 1.0 / (1.0 + np.exp(-logit))


def interactions(rng, true_users, true_items, popularity, price, sensitivity, per_user):
    """Each user's sampled items, more likely where the hidden click probability is high."""
    rows, cols = [], []
    for u in range(USERS):
        p = click_probability(true_users, true_items, popularity, price, sensitivity, np.full(ITEMS, u), np.arange(ITEMS))
        picked = rng.choice(ITEMS, size=per_user, replace=False, p=p / p.sum())
        rows.extend([u] * per_user)
        cols.extend(picked.tolist())
    matrix = np.zeros((USERS, ITEMS), dtype=np.float32)
    matrix[rows, cols] = 1.0
    return matrix


def candidates(user_vectors, item_vectors, k):
    """Exact inner-product top k of each user, float32 as kiln computes it."""
    scores = user_vectors.astype(np.float32) @ item_vectors.astype(np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def ranker_graph(gbc):
    """The classifier for [M, 3] features, wrapped to take affinity, popularity and price as
    [N, k] each and answer `score` [N, k]: P(click) of every candidate."""
    inner = convert_sklearn(
        gbc, initial_types=[("features", FloatTensorType([None, 3]))], target_opset=TARGET_OPSET,
        options={id(gbc): {"zipmap": False}},
    )
    g = inner.graph
    names = ["affinity", "popularity", "price"]
    pre = [helper.make_node("Unsqueeze", [n, "last_axis"], [f"{n}_3d"]) for n in names]
    pre += [
        helper.make_node("Concat", [f"{n}_3d" for n in names], ["grid"], axis=2),
        helper.make_node("Reshape", ["grid", "flat_shape"], ["features"]),
        helper.make_node("Shape", ["affinity"], ["grid_shape"]),
    ]
    post = [
        helper.make_node("Gather", ["probabilities", "click_column"], ["click"], axis=1),
        helper.make_node("Reshape", ["click", "grid_shape"], ["score"]),
    ]
    consts = [
        helper.make_tensor("last_axis", TensorProto.INT64, [1], [2]),
        helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, 3]),
        helper.make_tensor("click_column", TensorProto.INT64, [], [1]),
    ]
    grid = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "k"])
    graph = helper.make_graph(
        pre + list(g.node) + post, "recommend_ranker", [grid(n) for n in names], [grid("score")],
        initializer=list(g.initializer) + consts,
    )
    model = helper.make_model(graph, opset_imports=list(inner.opset_import), ir_version=inner.ir_version)
    model.producer_name = "skl2onnx"
    onnx.checker.check_model(model)
    return model


def build_recommend():
    """The catalogue, the users' vectors and the trained ranker (deterministic): what the
    recommend example is made of, and what the Python prototype in bench/ serves."""
    rng = np.random.default_rng(SEED)
    category, true_items, true_users, popularity, price, sensitivity = synthetic_catalogue(rng)
    seen = interactions(rng, true_users, true_items, popularity, price, sensitivity, per_user=40)
    # Item vectors: the matrix factorization of who interacted with what.
    svd = TruncatedSVD(n_components=DIM, random_state=SEED).fit(seen)
    # What kiln serves is what points.jsonl says: vectors to 5 decimals, popularity to 4.
    item_vectors = np.round(svd.components_.T.astype(np.float64), 5).astype(np.float32)  # [ITEMS, DIM]
    user_vectors = svd.transform(seen).astype(np.float32)  # [USERS, DIM]
    popularity = np.round(popularity, 4)

    # The ranker learns, on retrieved candidates, which ones a user clicks: features are the
    # retrieval affinity, popularity and price; labels are drawn from the hidden click model.
    train_users = rng.choice(USERS, size=600, replace=False)
    order, affinity = candidates(user_vectors[train_users], item_vectors, CANDIDATES)
    users = np.repeat(train_users, CANDIDATES)
    items = order.reshape(-1)
    features = np.stack([affinity.reshape(-1), popularity[items], price[items]], axis=1).astype(np.float32)
    p = click_probability(true_users, true_items, popularity, price, sensitivity, users, items)
    labels = (rng.uniform(size=p.shape) < p).astype(np.int64)
    gbc = GradientBoostingClassifier(n_estimators=60, max_depth=3, learning_rate=0.1, random_state=SEED)
    gbc.fit(features, labels)
    probe = np.array([u for u in range(USERS) if u not in set(train_users.tolist())][:32])
    return {
        "category": category, "item_vectors": item_vectors, "user_vectors": user_vectors,
        "popularity": popularity, "price": price, "gbc": gbc, "probe_users": probe,
        "train": (features, labels),
    }


def recommend(out_dir, fixtures_dir):
    built = build_recommend()
    category, item_vectors, user_vectors = built["category"], built["item_vectors"], built["user_vectors"]
    popularity, price, gbc, probe = built["popularity"], built["price"], built["gbc"], built["probe_users"]
    features, labels = built["train"]
    folder = os.path.join(out_dir, "items")
    os.makedirs(folder, exist_ok=True)
    write_json_lines(os.path.join(folder, "points.jsonl"), [
        {
            "id": f"item-{i:04d}",
            "vector": [float(x) for x in item_vectors[i].astype(np.float64).round(5)],
            "payload": {
                "title": f"{CATEGORY_NAMES[category[i]]} item {i}",
                "category": CATEGORY_NAMES[category[i]],
                "popularity": float(popularity[i]),
                "price": float(price[i]),
            },
        }
        for i in range(ITEMS)
    ])
    model = ranker_graph(gbc)
    version = os.path.join(out_dir, "recommend_ranker", "1")
    os.makedirs(version, exist_ok=True)
    onnx.save_model(model, os.path.join(version, "model.onnx"))

    # The prototype's answer for a few users: exact candidates, the ranker on onnxruntime,
    # the top 10 of each.
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    order, affinity = candidates(user_vectors[probe], item_vectors, CANDIDATES)
    pop = popularity[order].astype(np.float32)
    cost = price[order].astype(np.float32)
    (score,) = session.run(["score"], {"affinity": affinity, "popularity": pop, "price": cost})
    top = np.argsort(-score, axis=1, kind="stable")[:, :TOP]
    fixture = {
        "model": "recommend",
        "input": "user",
        "inputs": user_vectors[probe].astype(float).tolist(),
        "items": [[f"item-{order[r, c]:04d}" for c in top[r]] for r in range(len(probe))],
        "scores": np.take_along_axis(score, top, axis=1).astype(float).tolist(),
    }
    with open(os.path.join(fixtures_dir, "recommend.json"), "w") as f:
        json.dump(fixture, f)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(labels, gbc.predict_proba(features)[:, 1])
    print(f"recommend: {ITEMS} items, {USERS} users; ranker training: click rate {labels.mean():.3f}, AUC {auc:.3f}")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(root, "examples", "models"))
    parser.add_argument("--fixtures", default=os.path.join(root, "examples", "fixtures"))
    args = parser.parse_args()
    help_center(args.out)
    recommend(args.out, args.fixtures)
    print(f"retrieval examples in {args.out}, fixture in {args.fixtures}")


if __name__ == "__main__":
    main()
