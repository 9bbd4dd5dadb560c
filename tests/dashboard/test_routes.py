"""The dashboard page and its assets are served; the page loads its script from the same origin."""


def test_dashboard_page_and_assets(client):
    resp = client.get("/dashboard")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert '<script src="/dashboard/assets/app.js"' in html and "<script>" not in html  # no inline script (CSP)
    js = client.get("/dashboard/assets/app.js")
    assert js.status_code == 200 and b"/api/auth/login" in js.data
    assert client.get("/dashboard/assets/app.css").status_code == 200
    assert client.get("/dashboard/assets/nope.js").status_code == 404
    assert client.get("/dashboard/assets/..%2Froutes.py").status_code == 404
