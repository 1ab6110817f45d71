"""What an API call costs a client that signs in with HTTP Basic on a private site: the product's
``RememberingBasicAuthentication`` against DRF's plain ``BasicAuthentication`` (one password hash
per call), in one run, with an API token as the reference.

    .venv/bin/python bench/basic_auth.py [--calls 20] [--rounds 3]

Runs Django's test client in-process (no HTTP server) against the project's own embedded
PostgreSQL under var/bench-auth, ``CBIR_PRIVATE`` on, with ``GET /api/collections/`` (one small
collection). Each round times ``--calls`` calls per way, the ways alternating. The remembering
way starts each round with an empty memory, so its first call pays the hash; the figure is the
median call.
"""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import time

import project

ROOT = project.ROOT
VAR = ROOT / "var" / "bench-auth"
PASSWORD = "a long enough passphrase for the bench"


def setup_django() -> None:
    project.setup_django(VAR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    setup_django()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import override_settings
    from rest_framework.authentication import BasicAuthentication, TokenAuthentication
    from rest_framework.authtoken.models import Token

    from cbir_site import access
    from gallery.services import collection_get_or_create

    call_command("migrate", verbosity=0)
    collection_get_or_create(name="bench-auth")
    user = User.objects.filter(username="bench-auth").first() or User.objects.create_user("bench-auth")
    user.set_password(PASSWORD)
    user.save()
    token = Token.objects.get_or_create(user=user)[0]
    basic = "Basic " + base64.b64encode(f"bench-auth:{PASSWORD}".encode()).decode()
    ways = {
        "basic, plain (DRF)": ((TokenAuthentication(), BasicAuthentication()), basic),
        "basic, remembering (product)": ((TokenAuthentication(), access.RememberingBasicAuthentication()), basic),
        "token": ((TokenAuthentication(), access.RememberingBasicAuthentication()), f"Token {token.key}"),
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    client = Client()
    with override_settings(CBIR_PRIVATE=True, ALLOWED_HOSTS=["*"]):
        for round_ in range(args.rounds):
            order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
            for way in order:
                access.API_AUTHENTICATORS, header = ways[way]
                access.RememberingBasicAuthentication._verified.clear()
                for _ in range(args.calls):
                    started = time.perf_counter()
                    answer = client.get("/api/collections/", HTTP_AUTHORIZATION=header)
                    times[way].append(time.perf_counter() - started)
                    assert answer.status_code == 200, (way, answer.status_code)
    medians = {way: statistics.median(found) * 1000 for way, found in times.items()}
    plain = medians["basic, plain (DRF)"]
    report = {
        **project.report_header(),
        "hasher": user.password.split("$")[0] + " " + user.password.split("$")[1] + " iterations",
        "median_ms": {way: round(value, 2) for way, value in medians.items()},
        "ratio_to_plain": {way: round(value / plain, 4) for way, value in medians.items()},
        "calls_each": args.calls * args.rounds,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
