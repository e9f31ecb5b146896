"""Sends one message with an X-SMTPAPI header, base64 as SendCloud's
examples do, after starttls() and AUTH LOGIN with api_user and api_key: one
copy to each address of "to", with "%name%" replaced by each one's value, the
label given by "labelId" and the sender's own "customArgs".

Reads MAILFLEET_* from the environment; prints the server's reply to the
end of data. With MAILFLEET_SMTPAPI_PLAIN set, the header is plain JSON.
"""
import base64
import json
import os
import smtplib
import ssl
from email import policy
from email.message import EmailMessage

host = "127.0.0.1"
port = int(os.environ["MAILFLEET_SMTP_PORT"])
user = os.environ["MAILFLEET_API_USER"]
key = os.environ["MAILFLEET_API_KEY"]
cafile = os.environ["MAILFLEET_CA_FILE"]

smtpapi = {
    "to": ["ann@example.com", "bob@example.net"],
    "sub": {"%name%": ["Ann", "Bob"], "%money%": ["199", "299"]},
    "labelId": 1001,
    "customArgs": {"order": "42"},
}
value = json.dumps(smtpapi)
if not os.environ.get("MAILFLEET_SMTPAPI_PLAIN"):
    value = base64.b64encode(value.encode()).decode()

msg = EmailMessage(policy=policy.SMTP)
msg["Subject"] = "Hello %name%"
msg["From"] = "support@ifaxin.com"
msg["To"] = "list@ifaxin.com"
msg["X-SMTPAPI"] = value
msg.set_content("Dear %name%, you owe %money%.\n", cte="8bit")

with smtplib.SMTP(host, port, timeout=30) as s:
    s.ehlo("ifaxin.com")
    s.starttls(context=ssl.create_default_context(cafile=cafile))
    s.ehlo("ifaxin.com")
    # AUTH LOGIN, as the seeds' clients log in (login() would pick PLAIN).
    s.user, s.password = user, key
    code, reply = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235, (code, reply)
    s.mail("support@ifaxin.com")
    s.rcpt("list@ifaxin.com")
    code, reply = s.data(msg.as_bytes())
    print(code, reply.decode())
