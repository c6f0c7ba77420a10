from twisted.application.service import ServiceMaker

imd = ServiceMaker(
    "imd",
    "imd.tap",
    "imd: instant messaging for delivery platforms (WebSocket, Redis, MySQL)",
    "imd",
)
