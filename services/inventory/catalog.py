"""The demo catalog that ``make run`` seeds, so a fresh shop has something to sell."""

from __future__ import annotations

from services.inventory.store import ProductRecord

DEMO_CATALOG = (
    ProductRecord("TEA-SENCHA", "Sencha green tea, 100 g", 1250, "EUR", 100),
    ProductRecord("TEA-MATCHA", "Ceremonial matcha, 30 g", 2400, "EUR", 50),
    ProductRecord("CUP-KYUSU", "Tokoname kyusu teapot", 6800, "EUR", 20),
    ProductRecord("CUP-YUNOMI", "Yunomi tea cup", 1800, "EUR", 60),
    ProductRecord("WHISK-CHASEN", "Bamboo matcha whisk", 1500, "EUR", 40),
)
