"""Sends a multipart/related message with an inline image the way the seed
examples do: starttls(), then login(api_user + '#' + label_id, api_key).

Reads MAILFLEET_* from the environment; writes the exact bytes it handed to
smtplib to SENT_FILE so the test can compare them with what was stored, and
prints the server's reply to the end of data.
"""
import os
import smtplib
import ssl
from email import policy
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

host = "127.0.0.1"
port = int(os.environ["MAILFLEET_SMTP_PORT"])
user = os.environ["MAILFLEET_API_USER"]
label = os.environ["MAILFLEET_LABEL_ID"]
key = os.environ["MAILFLEET_API_KEY"]
cafile = os.environ["MAILFLEET_CA_FILE"]

# A 1x1 PNG, plus some bytes that exercise base64 line wrapping.
png = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
) + bytes(range(256)) * 8

msg = MIMEMultipart("related")
msg["Subject"] = "seed example: inline image"
msg["From"] = "support@ifaxin.com"
msg["To"] = "ben@ifaxin.com"
alt = MIMEMultipart("alternative")
alt.attach(MIMEText("plain text part\n.\nwith a lone dot line", "plain", "utf-8"))
alt.attach(MIMEText('<p>Hello <img src="cid:logo"></p>', "html", "utf-8"))
msg.attach(alt)
img = MIMEImage(png, "png")
img.add_header("Content-ID", "<logo>")
img.add_header("Content-Disposition", "inline", filename="logo.png")
msg.attach(img)

data = msg.as_bytes(policy=policy.SMTP)
with open(os.environ["SENT_FILE"], "wb") as f:
    f.write(data)

with smtplib.SMTP(host, port, timeout=30) as s:
    s.ehlo("ifaxin.com")
    s.starttls(context=ssl.create_default_context(cafile=cafile))
    s.ehlo("ifaxin.com")
    s.login(user + "#" + label, key)
    s.mail("support@ifaxin.com", ["size=%d" % len(data)])
    s.rcpt("ben@ifaxin.com")
    code, reply = s.data(data)
    print(code, reply.decode())
