"""The violation taxonomy file: required ids and codes, city overrides, clear errors."""

import pytest

from detector import TaxonomyError, load_taxonomy

REQUIRED = {
    "bin_overflow": "06042",
    "exposed_garbage": "06010",
    "road_spillage": "06014",
    "muck_truck_uncovered": "08011",
    "illegal_flyer": "07001",
    "illegal_banner": "07007",
    "illegal_sign": "07003",
    "mobile_vendor": "09001",
    "shopfront_occupation": "09005",
    "street_stall": "09006",
}


def test_builtin_taxonomy_has_the_contract_ids_and_codes():
    taxonomy = load_taxonomy()
    for violation_id, code in REQUIRED.items():
        assert taxonomy[violation_id].matter_code == code
    assert taxonomy["exposed_garbage"].alt_matter_codes == ("06011",)
    assert taxonomy["illegal_sign"].alt_matter_codes == ("07006",)
    assert taxonomy["mobile_vendor"].legacy_code == "0501"
    assert taxonomy["bin_overflow"].full_matter_code("370202") == "37020206042"
    known = set(taxonomy.all_detector_classes)
    for v in taxonomy.violations:
        assert v.name_zh and v.name_en
        assert set(v.detector_classes) <= known, v.id


def test_full_matter_code_needs_six_digit_division():
    with pytest.raises(ValueError, match="6 digits"):
        load_taxonomy()["bin_overflow"].full_matter_code("3702")


def test_city_file_overrides_and_extends(tmp_path):
    city = tmp_path / "qingdao.yaml"
    city.write_text(
        """
version: qingdao-2026
violations:
  - {id: bin_overflow, legacy_code: "0110", dwell_s: 30}
  - id: illegal_parking_bike
    name_zh: 共享单车乱停放
    name_en: Shared bikes parked on the sidewalk
    matter_code: "09010"
    detector_classes: [bicycle]
""",
        encoding="utf-8",
    )
    taxonomy = load_taxonomy(city)
    assert taxonomy.version == "qingdao-2026"
    assert taxonomy["bin_overflow"].legacy_code == "0110"
    assert taxonomy["bin_overflow"].dwell_s == 30
    assert taxonomy["bin_overflow"].matter_code == "06042"  # untouched fields survive
    assert taxonomy["illegal_parking_bike"].matter_code == "09010"
    assert len(taxonomy.violations) == len(REQUIRED) + 1


@pytest.mark.parametrize(
    "entry, expected",
    [
        ('{id: bin_overflow, matter_code: "6042"}', r"violation 'bin_overflow', field matter_code: .*5 digits"),
        ('{id: bin_overflow, min_score: 1.5}', r"violation 'bin_overflow', field min_score"),
        ("{id: new_thing, name_en: x}", r"violation 'new_thing', field name_zh: Field required"),
        ('{id: bin_overflow, colour: red}', r"violation 'bin_overflow', field colour: Extra inputs"),
        ('{id: Bad-Id, name_zh: x, name_en: y, matter_code: "01001"}', r"field id: .*snake_case"),
        ("{name_en: no id}", r"violations\[0\], field id"),
    ],
)
def test_malformed_city_file_names_entry_and_field(tmp_path, entry, expected):
    city = tmp_path / "city.yaml"
    city.write_text(f"violations:\n  - {entry}\n", encoding="utf-8")
    with pytest.raises(TaxonomyError, match=expected):
        load_taxonomy(city)


def test_unreadable_or_non_yaml_file(tmp_path):
    with pytest.raises(TaxonomyError, match="cannot read"):
        load_taxonomy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("violations: [unclosed", encoding="utf-8")
    with pytest.raises(TaxonomyError, match="not valid YAML"):
        load_taxonomy(bad)
