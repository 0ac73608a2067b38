"""A GenericApplication: python app.py NAME [GROUP ...]. Prints what reaches it."""
import sys

from postage import generic_application, messaging, microthreads


class DemoApp(generic_application.GenericApplication):
    @messaging.MessageHandlerFullBody('command', 'hello')
    def msg_hello(self, body):
        text = body['content']['parameters']
        print(f"{self.name} (pid {self.pid}) got hello: {text}")


fingerprint = messaging.Fingerprint(sys.argv[1], 'application').as_dict()
app = DemoApp(fingerprint, groups=sys.argv[2:])

scheduler = microthreads.MicroScheduler()
scheduler.add_microthread(app)
for _ in scheduler.main():
    pass
print(f"{app.name} (pid {app.pid}) quit")
