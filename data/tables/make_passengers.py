"""Writes passengers.csv: 600 made-up passengers of a made-up ship, in the shape of the
Titanic table the 004 article trains on (not its data). Survival follows a known rule
(women, first class, children and the young, Cherbourg more likely) with noise, so a
classifier has something real to find; fare depends on class, so a regression does too.

    python data/tables/make_passengers.py     # rewrites data/tables/passengers.csv
"""
import csv
import os

import numpy as np

FIRST = ["Ada", "Ben", "Cora", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jule", "Kai",
         "Lena", "Milo", "Nora", "Otto", "Pia", "Quin", "Rosa", "Sven", "Tia"]
LAST = ["Abbot", "Brandt", "Calder", "Dunn", "Ebert", "Frost", "Gale", "Hart", "Imhof",
        "Jovic", "Kern", "Lund", "Moss", "Nagy", "Orr", "Petit", "Quist", "Roth"]


def main(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "passengers.csv")):
    rng = np.random.default_rng(2026)
    n = 600
    pclass = rng.choice([1, 2, 3], n, p=[0.25, 0.25, 0.5])
    female = rng.random(n) < 0.4
    age = np.clip(rng.normal(30, 13, n), 0.5, 80).round(1)
    sibsp = rng.poisson(0.5, n)
    parch = rng.poisson(0.4, n)
    fare = (np.array([0, 85.0, 22.0, 9.0])[pclass] * rng.lognormal(0, 0.35, n)).round(2)
    embarked = rng.choice(["S", "C", "Q"], n, p=[0.7, 0.2, 0.1])
    logit = (2.4 * female - 1.1 * (pclass - 2) - 0.035 * (age - 30)
             + 0.5 * (embarked == "C") - 0.3 * sibsp + rng.normal(0, 0.7, n))
    survived = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["passenger_id", "name", "pclass", "sex", "age", "sibsp", "parch", "fare",
                    "embarked", "survived"])
        for i in range(n):
            name = f"{LAST[rng.integers(len(LAST))]}, {FIRST[rng.integers(len(FIRST))]}"
            w.writerow([i + 1, name, pclass[i], "female" if female[i] else "male", age[i],
                        sibsp[i], parch[i], fare[i], embarked[i], survived[i]])


if __name__ == "__main__":
    main()
