from sitok.data.text import check_transcript, normalize_text


def test_normalize_text():
    assert normalize_text("Hello, World!") == "hello world"
    assert normalize_text("  DON'T   stop\tnow. ") == "don't stop now"
    assert normalize_text("Don\u2019t") == "don't"
    assert normalize_text("Café naïve") == "cafe naive"
    assert normalize_text("well-known 'quoted' words") == "well known quoted words"
    assert normalize_text("CHAPTER I. -- THE END") == "chapter i the end"
    assert normalize_text("\u4e2d\u6587") == ""
    assert normalize_text("") == ""


def test_check_transcript():
    assert check_transcript("?!") == ("", "empty-text")
    assert check_transcript("Yes.") == ("yes", None)
