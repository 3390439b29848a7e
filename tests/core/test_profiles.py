"""Profiles are validated by a strict schema: typos, string booleans and mistyped numbers are one-line errors naming
the file, the section and the key (before this schema they were ignored, read as true, or crashed later)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from latentcheck.core.errors import ProfileError
from latentcheck.core.profiles import DecodingSpec, builtin_profiles, get_profile

# (what the user wrote, replacing what in toy-latent's file, the expected "[section] key: ..." part of the message)
BAD_PROFILES = [
    ("typo in a key", "[attention]\n", '[attention]\nimage_visiblity = "none"\n', "[attention] image_visiblity: unknown key"),
    ("string boolean", "eos_guard = false", 'eos_guard = "false"', "[latent] eos_guard: Input should be a valid boolean (got 'false'"),
    ("'no' as boolean", "do_sample = false", 'do_sample = "no"', "[decoding] do_sample: Input should be a valid boolean (got 'no'"),
    ("fractional int", "k = 4", "k = 4.5", "[latent] k: Input should be a valid integer (got 4.5"),
    ("string int", "k = 4", 'k = "4"', "[latent] k: Input should be a valid integer (got '4'"),
    ("string max_new_tokens", "max_new_tokens = 12", 'max_new_tokens = "12"',
     "[decoding] max_new_tokens: Input should be a valid integer (got '12'"),
    ("out of range k", "k = 4", "k = 0", "[latent] k: Input should be greater than or equal to 1"),
    ("unknown choice", 'entry = "after_start"', 'entry = "sideways"', "[latent] entry: Input should be 'after_start' or"),
    ("typo in a section", "[answer]", "[anwser]", "[anwser]: unknown section"),
    ("unknown extractor", 'extractor = "letter"', 'extractor = "lettr"', "[answer] extractor: unknown extractor 'lettr'"),
    ("section not a table", 'kind = "latent"\n', 'kind = "latent"\nprocessor = 3\n',
     "[processor]: must be a table, got int"),
]


@pytest.fixture()
def toy_text() -> str:
    return Path(get_profile("toy-latent").path).read_text()


@pytest.mark.parametrize("kind,old,new,expected", BAD_PROFILES, ids=[b[0] for b in BAD_PROFILES])
def test_a_bad_profile_is_one_line_naming_file_section_and_key(kind, old, new, expected, toy_text, tmp_path):
    assert old in toy_text
    f = tmp_path / "mine.toml"
    f.write_text(toy_text.replace(old, new, 1))
    with pytest.raises(ProfileError) as e:
        get_profile(str(f))
    msg = str(e.value)
    assert msg.startswith(f"profile file {f}: ") and expected in msg, msg
    assert "\n" not in msg


def test_every_problem_is_reported_at_once(toy_text, tmp_path):
    f = tmp_path / "two.toml"
    f.write_text(toy_text.replace("k = 4", "k = 4.5").replace('eos_guard = false', 'eos_guard = "false"'))
    with pytest.raises(ProfileError, match=r"\[latent\] k: .*; \[latent\] eos_guard: "):
        get_profile(str(f))


def test_builtin_profiles_pass_the_schema_and_keep_their_values():
    profiles = builtin_profiles()
    assert profiles["monet"].latent.k == 10 and profiles["monet"].decoding.do_sample is True
    assert profiles["monet"].processor == {"min_pixels": 200704, "max_pixels": 6422528}
    assert profiles["toy-latent"].decoding.do_sample is False and profiles["toy-latent"].decoding.max_new_tokens == 12
    assert profiles["lvr"].tokens["inner_end"] == "<|lvr_latent_end|>"


def test_specs_built_in_code_are_validated_too():
    assert DecodingSpec(temperature=1).temperature == 1  # an integer is a valid float
    with pytest.raises(Exception, match="valid boolean"):
        DecodingSpec(do_sample="no")
    with pytest.raises(Exception, match="valid integer"):
        dataclasses.replace(DecodingSpec(), max_new_tokens="12")


def test_feedback_layer_out_of_range_is_refused_at_load_before_any_writer(tiny_checkpoint, toy_text, tmp_path):
    """`feedback_layer = 99` used to crash with an IndexError after the results file was opened."""
    from latentcheck.core.loader import load_model

    f = tmp_path / "deep.toml"
    f.write_text(toy_text.replace("eos_guard = false", "eos_guard = false\nfeedback_layer = 99"))
    with pytest.raises(ProfileError, match=r"\[latent\] feedback_layer = 99 is out of range for this checkpoint's "
                                           r"\d+ decoder layers"):
        load_model(str(tiny_checkpoint("toy", "toy-latent")), profile=str(f))
