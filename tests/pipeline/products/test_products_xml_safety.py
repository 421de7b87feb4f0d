"""Product metadata is untrusted XML: entity bombs and external entities are refused, naming the file."""

from __future__ import annotations

import re
import time

import pytest

from pipeline.errors import InputError
from pipeline.products import read_product, recognise
from pipeline.products.common import parse_xml

METADATA = {"gf2": "*-MSS1.xml", "gf3": "*.meta.xml", "s2": "MTD_MSIL*.xml"}

# Ten levels of ten references: "lol" expanded 10^9 times if a parser followed it.
BILLION_LAUGHS = '<!DOCTYPE bomb [<!ENTITY lol0 "lol">' + "".join(
    f'<!ENTITY lol{i} "' + f"&lol{i - 1};" * 10 + '">' for i in range(1, 10)
) + "]>"


def _poison(xml, doctype: str, reference: str) -> None:
    """Put a DOCTYPE after the XML declaration and an entity reference just inside the root element."""
    text = xml.read_text()
    declaration, body = text.split("?>", 1)
    body = re.sub(r"(<[A-Za-z][^>]*>)", lambda m: m.group(1) + reference, body, count=1)
    xml.write_text(f"{declaration}?>{doctype}{body}")


@pytest.mark.parametrize("kind", sorted(METADATA))
def test_a_billion_laughs_in_product_metadata_is_refused_naming_the_file(kind, copy_of, settings):
    product = copy_of(kind)
    (xml,) = product.rglob(METADATA[kind])
    _poison(xml, BILLION_LAUGHS, "&lol9;")
    started = time.perf_counter()
    with pytest.raises(InputError) as info:
        read_product(recognise(product), settings)
    message = str(info.value)
    assert time.perf_counter() - started < 5
    assert info.value.path == product
    assert f"unsafe XML in {xml.name} refused: entity declarations and external references are not allowed" in message
    assert "lol0" in message and "\n" not in message
    assert not list(settings.cache.rglob("*.tif"))  # nothing was read into the cache


@pytest.mark.parametrize("kind", sorted(METADATA))
def test_an_external_entity_in_product_metadata_is_refused_without_reading_the_target(kind, copy_of, settings, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    product = copy_of(kind)
    (xml,) = product.rglob(METADATA[kind])
    _poison(xml, f'<!DOCTYPE leak [<!ENTITY leak SYSTEM "file://{secret}">]>', "&leak;")
    with pytest.raises(InputError) as info:
        read_product(recognise(product), settings)
    assert f"unsafe XML in {xml.name} refused" in str(info.value)
    assert str(secret) in str(info.value)  # the entity is named...
    assert "TOP-SECRET-CONTENT" not in str(info.value)  # ...and never expanded


def test_parse_xml_refuses_an_internal_entity_even_a_harmless_one(tmp_path):
    product = tmp_path / "GF2_PMS1_E117.2_N31.9_20190501_L1A0004781234"
    product.mkdir()
    xml = product / "meta.xml"
    xml.write_text('<?xml version="1.0"?><!DOCTYPE p [<!ENTITY sat "GF2">]><ProductMetaData>&sat;</ProductMetaData>')
    with pytest.raises(InputError, match=r"unsafe XML in meta.xml refused: .*name='sat'"):
        parse_xml(xml, product)


def test_parse_xml_still_reads_plain_metadata_with_a_doctype_but_no_entities(tmp_path):
    xml = tmp_path / "meta.xml"
    xml.write_text('<?xml version="1.0"?><!DOCTYPE ProductMetaData><ProductMetaData><A>1</A></ProductMetaData>')
    root = parse_xml(xml, tmp_path)
    assert root.tag == "ProductMetaData"
    assert root.find("A").text == "1"
